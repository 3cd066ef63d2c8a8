"""Writing a folder whole: everything goes to `<folder>.partial` first and is renamed into
place at the end, so that a killed or failed run never leaves half a folder behind."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_whole(final: Path) -> Iterator[Path]:
    """Yield an empty `<final>.partial` folder; when the block ends without an error it
    replaces `final`, otherwise it is removed and `final` is left as it was."""
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
