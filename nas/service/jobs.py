"""The service's jobs: a search or a full distillation run as a child process of the server,
running the `nas` command line's own code, with everything about it on disk so that a
restarted server finds it again.

A job is a folder, `<study folder>/jobs/<id>/`:

- `job.json`: what was asked (the `nas` arguments, the study, when), written once by the server;
- `state.json`: `running` with the child's pid, then how it ended (`completed`, `failed` with
  the error line, `stopped`), written by the child;
- `progress.json`: the last progress figures (a finished trial of a search, a step of a full
  run), written by the child as they come;
- `log.txt`: the child's output, what the command line would have printed.

A job whose state says `running` but whose process is gone was `interrupted` (the machine or
the child was killed); an interrupted or stopped distillation can be resumed from its last
checkpoint. Run a job's folder with `python -m nas.service.jobs FOLDER`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from distill.files import file_written_whole
from nas.study.locks import pid_alive

logger = logging.getLogger(__name__)

JOB, STATE, PROGRESS, LOG = "job.json", "state.json", "progress.json", "log.txt"
ACTIVE = ("starting", "running")
"""states of a job whose process may still run"""
STOP_WAIT_S = 60.0
"""after asking a job to stop (SIGINT, as Ctrl-C), how long before it is killed"""
INTERRUPTED_EXIT = 130
"""the `nas` command line's exit code after Ctrl-C"""
PRIVATE_ENV = ("NAS_TOKEN",)
"""the server's secrets, not handed to its jobs"""


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` whole: readers never see half a file."""
    with file_written_whole(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def started_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), None when there is no such
    process, it has exited (a zombie), or the system has no /proc: tells a reused pid from
    the job's own."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(state: dict[str, Any]) -> bool:
    """Whether the process a job's state names still runs (and is that process)."""
    pid = state.get("pid")
    if not pid:
        return False
    if state.get("started_ticks") is None:  # no /proc here: the pid alone
        return pid_alive(pid)
    return started_ticks(pid) == state["started_ticks"]


class Jobs:
    """The jobs of a folder of studies: start, read, stop and resume them. The server holds one;
    children it started are reaped here, and a child that ended without saying how is
    recorded (interrupted when killed while it ran, failed otherwise)."""

    def __init__(self, studies: Path) -> None:
        self.studies = studies
        self.children: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.stopping: set[str] = set()
        """jobs asked to stop"""
        self.lock = threading.Lock()

    def start(self, study: str, study_dir: Path, kind: str, args: list[str], **about: Any) -> dict[str, Any]:
        """Start `nas <args>` as a job of `study` (outputs in `study_dir`); `about`: what the
        pages show of it (trial, target...)."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
        folder = study_dir / "jobs" / job_id
        folder.mkdir(parents=True)
        job = {"id": job_id, "study": study, "kind": kind, "args": args, "created": time.time(), **about}
        write_json(folder / JOB, job)
        write_json(folder / STATE, {"state": "starting"})
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV} | {
            "TQDM_DISABLE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        try:
            with open(folder / LOG, "ab") as log:
                child = subprocess.Popen(
                    # -P: the folder it runs in is not searched for modules (a distill/ there is not ours)
                    [sys.executable, "-P", "-m", "nas.service.jobs", str(folder)],
                    cwd=self.studies.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # the server's Ctrl-C is not the job's; stop() stops it
                )
        except OSError as exc:
            write_json(folder / STATE, {"state": "failed", "error": f"could not start: {exc}", "ended": time.time()})
            return self.read(folder)
        # the child writes its own state once it runs; until then its pid says it lives
        state = {"state": "starting", "pid": child.pid, "started_ticks": started_ticks(child.pid)}
        if read_json(folder / STATE).get("state") == "starting":
            write_json(folder / STATE, state)
        with self.lock:
            self.children[job_id] = (child, folder)
        logger.info("job %s: nas %s (pid %d)", job_id, " ".join(args), child.pid)
        return self.read(folder)

    def all(self) -> list[dict[str, Any]]:
        """Every job of every study folder, newest first."""
        jobs = [self.read(p.parent) for p in self.studies.glob(f"*/jobs/*/{JOB}")]
        return sorted(jobs, key=lambda j: j.get("created", 0), reverse=True)

    def find(self, job_id: str) -> Path | None:
        if not job_id or not job_id.replace("-", "").isalnum() or not job_id.isascii():
            return None
        found = [p.parent for p in self.studies.glob(f"*/jobs/{job_id}/{JOB}")]
        return found[0] if found else None

    def read(self, folder: Path) -> dict[str, Any]:
        """A job as the API gives it: what was asked, its state, progress and exit."""
        self._reap()
        job = read_json(folder / JOB)
        state = read_json(folder / STATE)
        if state.get("state") in ACTIVE and not self._running(job.get("id", ""), state):
            # the child is gone without saying how it ended: killed, or the machine went down
            state = {**state, "state": "interrupted"}
        return {**job, **state, "progress": read_json(folder / PROGRESS)}

    def _running(self, job_id: str, state: dict[str, Any]) -> bool:
        with self.lock:
            mine = self.children.get(job_id)
        if mine is not None:
            return mine[0].poll() is None
        return _alive(state)

    def _reap(self) -> None:
        """Children that ended: no zombie left, and one that ended without writing how is
        recorded: killed by a signal while it ran, interrupted (a distillation resumes);
        otherwise (an import error, a signal before it ran) failed, saying so (its log tells why)."""
        with self.lock:
            ended = [(i, c, f) for i, (c, f) in self.children.items() if c.poll() is not None]
            for job_id, _, _ in ended:
                del self.children[job_id]
        for job_id, child, folder in ended:
            self.stopping.discard(job_id)
            state = read_json(folder / STATE)
            if state.get("state") in ACTIVE:
                code = child.returncode
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                ended = "interrupted" if code < 0 and state["state"] == "running" else "failed"
                write_json(
                    folder / STATE,
                    {
                        **state,
                        "state": ended,
                        "exit_code": code,
                        "ended": time.time(),
                        "error": f"{how} before it recorded how it ended (see its log)",
                    },
                )

    def running(self, study: str | None = None) -> list[dict[str, Any]]:
        return [j for j in self.all() if j.get("state") in ACTIVE and study in (None, j.get("study"))]

    def log_tail(self, folder: Path, lines: int = 40) -> list[str]:
        try:
            with open(folder / LOG, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line.rstrip("\r") for line in text.splitlines()[-lines:]]

    def stop(self, folder: Path, wait_s: float = STOP_WAIT_S) -> dict[str, Any]:
        """Ask the job to stop as Ctrl-C would (completed trials and the last checkpoint stay),
        once; kill it and what it started when it has not stopped after `wait_s`."""
        self._ask_to_stop(folder)
        return self._wait_stopped([folder], wait_s)[0]

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> None:
        """At the server's shutdown: stop the jobs it started, all at once (they show as
        stopped, and a distillation can be resumed)."""
        with self.lock:
            folders = [f for _, f in self.children.values()]
        for folder in folders:
            self._ask_to_stop(folder)
        self._wait_stopped(folders, wait_s)

    def _ask_to_stop(self, folder: Path) -> None:
        job = self.read(folder)
        if job.get("state") not in ACTIVE or not job.get("pid"):
            return
        with self.lock:
            if job["id"] in self.stopping:  # asked once: a second Ctrl-C would cut its clean-up short
                return
            self.stopping.add(job["id"])
        _signal(job["pid"], signal.SIGINT)

    def _wait_stopped(self, folders: list[Path], wait_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(self.read(f).get("state") in ACTIVE for f in folders):
            time.sleep(0.2)
        for folder in folders:
            job = self.read(folder)
            if job.get("state") in ACTIVE and job.get("pid"):
                logger.warning("job %s did not stop after %.0f s; killing it", job.get("id"), wait_s)
                _signal(job["pid"], signal.SIGKILL, group=True)
        return [self.read(f) for f in folders]


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:  # the job leads its own session: its group holds what it started
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(folder: Path) -> int:
    """The child: run the job's `nas` arguments with the command line's code, writing its
    state and progress into `folder`, and how it ended as data: the command's typed result,
    or its one-line error."""
    from nas import cli

    job = read_json(folder / JOB)
    sys.argv = ["nas", *job["args"]]  # how the study's locks name this run to others
    state: dict[str, Any] = {
        "state": "running",
        "pid": os.getpid(),
        "started_ticks": started_ticks(os.getpid()),
        "started": time.time(),
    }
    write_json(folder / STATE, state)

    def progress(event: dict[str, Any]) -> None:
        write_json(folder / PROGRESS, {**event, "at": time.time()})

    for sig in (signal.SIGINT, signal.SIGTERM):  # either stops the job as Ctrl-C does, once
        signal.signal(sig, _interrupt)
    outcome = cli.Outcome(1)
    try:
        outcome = cli.run(job["args"], progress=progress)
    except BaseException as exc:  # noqa: BLE001 - the job's state says how it ended
        logger.exception("job failed")
        outcome = cli.Outcome(1, error=f"{type(exc).__name__}: {exc}")
    ended = {0: "completed", INTERRUPTED_EXIT: "stopped"}.get(outcome.code, "failed")
    result = dataclasses.asdict(outcome.result) if dataclasses.is_dataclass(outcome.result) else {}
    record = {"state": ended, "exit_code": outcome.code, "ended": time.time(), "result": result}
    if ended == "failed":
        record["error"] = outcome.error or f"exit code {outcome.code}"
    write_json(folder / STATE, {**state, **record})
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up that follows runs to its end
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
