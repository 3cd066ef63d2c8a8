"""Writing a folder or a file whole: everything goes to a `.partial` neighbour first and is
renamed into place at the end, so that a killed or failed run never leaves half of it behind."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def file_written_whole(final: Path) -> Iterator[Path]:
    """Yield a path beside `final` to write; when the block ends without an error it replaces
    `final` in one rename (readers see the old file or the new one, never half of one)."""
    tmp = final.with_name(f".{final.name}.partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
