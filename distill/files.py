"""Writing a folder or a file whole: everything goes to a `.partial` neighbour first and is
renamed into place at the end, so that a killed or failed run never leaves half of it behind;
and locks that say who holds them, so that two processes never write the same thing at once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


class Busy(Exception):
    """Another live process holds a lock; `holder` says who (pid, host, since, command)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(describe_holder(holder))
        self.holder = holder


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (which did not say who it is)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    what = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since}{what}"


def whoami() -> dict[str, Any]:
    """This process, as a lock's holder: pid, host, since, and its command (URLs without passwords)."""
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name  # python -m nas: nas
    command = " ".join([name, *sys.argv[1:]])
    command = re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", command)
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command[:200]}


def holder_of(lock: Path) -> dict[str, Any]:
    """Who wrote themselves down as `lock`'s holder (empty when nobody did)."""
    try:
        return json.loads(lock.with_name(lock.name + ".holder").read_text())
    except (OSError, ValueError):
        return {}


def holder_if_held(lock: Path) -> dict[str, Any] | None:
    """Who holds `lock` now (an empty dict when its holder did not say), None when it is
    free. Looks without taking it for longer than a try."""
    from filelock import FileLock, Timeout

    if not lock.exists():
        return None
    probe = FileLock(lock, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return holder_of(lock)
    probe.release()
    return None


@contextlib.contextmanager
def held(lock: Path, *, wait: bool = True, what: str = "") -> Iterator[None]:
    """Hold the exclusive lock `lock` (an OS file lock: a killed holder's lock is released by
    the system, so it is taken over without anyone cleaning up). `wait=False`: raise `Busy`
    at once when a live process holds it; otherwise wait for it, saying for whom once."""
    from filelock import FileLock, Timeout

    lock.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(lock, thread_local=False)
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise Busy(holder_of(lock)) from None
        logger.info("waiting for %s, held by %s", what or lock.name, describe_holder(holder_of(lock)))
        file_lock.acquire()
    try:
        with file_written_whole(lock.with_name(lock.name + ".holder")) as tmp:
            tmp.write_text(json.dumps(whoami()))
        yield
    finally:
        lock.with_name(lock.name + ".holder").unlink(missing_ok=True)
        file_lock.release()
