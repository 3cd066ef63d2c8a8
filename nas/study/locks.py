"""One writer per study: `nas search` holds the study's search, `nas distill` (and `nas
rank-check`) the trial it distills. A second run is refused at once with one line that says who
holds it since when, and touches nothing.

Two locks make a writer. An OS file lock in the study's folder (a killed holder's lock is
released by the system and taken over by the next run at once), and, for a storage that other
machines may share (an RDB URL, a journal file; not the study folder's SQLite file), a lease in
the storage itself: the holder's pid, host and a heartbeat, taken over once the heartbeat is
older than `LEASE_S` or when the holder was on this machine and is gone (machines that share a
storage keep their clocks in sync, as NTP does). A holder whose lease was taken over stops."""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from distill.errors import InputError
from distill.files import Busy, describe_holder, held, holder_if_held, whoami
from nas.spec import StudySpec

logger = logging.getLogger(__name__)

LEASE_S = 60.0
"""a lease whose holder has not renewed it for this long is taken over"""
CONFIRM_S = 0.5
"""after writing a lease, read it back this much later: of two runs taking it at once, one wins"""


def shared_storage(url: str) -> bool:
    """Whether other machines may write the storage (anything but a SQLite file)."""
    return not url.startswith("sqlite:")


@contextlib.contextmanager
def study_writer(
    spec: StudySpec, role: str, doing: str, open_study: Callable[[], optuna.Study]
) -> Iterator[optuna.Study]:
    """Hold `role` of the study ("search", "distill-<trial>") and yield the study
    (`open_study()`, called once the file lock is held): the file lock, then on a shared
    storage the storage's lease. Raise `InputError` saying what the holder is `doing` ("study
    'x' is being searched"), who it is and since when, when another live run holds either."""
    stack = contextlib.ExitStack()
    with stack:
        try:
            stack.enter_context(held(writer_lock(spec, role), wait=False))
            study = open_study()
            if shared_storage(spec.storage_url):
                stack.enter_context(lease(study, role))
        except Busy as busy:
            raise InputError(f"study.name: {doing} by {busy}; wait for it to end or stop it") from None
        yield study


def writer_lock(spec: StudySpec, role: str) -> Path:
    return spec.out_dir / "locks" / f"{role}.lock"


def writer_of(spec: StudySpec, role: str) -> str | None:
    """Who holds `role` of the study on this machine ("pid 42 on host since ..."), None when
    nobody does: for refusing a run before starting it."""
    holder = holder_if_held(writer_lock(spec, role))
    return None if holder is None else describe_holder(holder)


def lease_key(role: str) -> str:
    return f"writer:{role}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(holder: dict[str, Any], now: float) -> bool:
    if not holder:
        return True
    if now - holder.get("beat", 0) > LEASE_S:
        return True
    return holder.get("host") == whoami()["host"] and not pid_alive(int(holder.get("pid", 0)))


@contextlib.contextmanager
def lease(study: optuna.Study, role: str) -> Iterator[None]:
    """Hold the storage-side lease of `role`, renewed every `LEASE_S / 4` by a thread; raise
    `Busy` when a live holder has it."""
    key = lease_key(role)
    holder = study.user_attrs.get(key) or {}
    if not _stale(holder, time.time()):
        raise Busy(holder)
    if holder:
        logger.warning("taking over the lease of %s, which is no longer renewed", describe_holder(holder))
    me = {**whoami(), "token": uuid.uuid4().hex, "beat": time.time()}
    study.set_user_attr(key, me)
    time.sleep(CONFIRM_S)  # two runs that wrote at once: the last write wins, the other sees it
    now = study.user_attrs.get(key) or {}
    if now.get("token") != me["token"]:
        raise Busy(now)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                current = study.user_attrs.get(key) or {}
                if current.get("token") == me["token"]:
                    study.set_user_attr(key, {**me, "beat": time.time()})
                    continue
            except Exception as exc:  # noqa: BLE001 - a storage that does not answer: try again
                logger.warning("could not renew the lease of %s: %s", role, exc)
                continue
            # Another run took it (this one was silent for LEASE_S): two writers must not go on.
            logger.error("the lease of %s was taken by %s; stopping", role, describe_holder(current))
            _thread.interrupt_main()
            return

    thread = threading.Thread(target=renew, name=f"lease {role}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=LEASE_S / 4)
        if (study.user_attrs.get(key) or {}).get("token") == me["token"]:
            study.set_user_attr(key, {})


__all__ = ["LEASE_S", "lease", "shared_storage", "study_writer"]
