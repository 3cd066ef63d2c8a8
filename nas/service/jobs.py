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

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JOB, STATE, PROGRESS, LOG = "job.json", "state.json", "progress.json", "log.txt"
ACTIVE = ("starting", "running")
"""states of a job whose process may still run"""
STOP_WAIT_S = 30.0
"""after asking a job to stop (SIGINT, as Ctrl-C), how long before it is terminated"""
INTERRUPTED_EXIT = 130
"""the `nas` command line's exit code after Ctrl-C"""


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` whole: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _started_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), None when there is no such
    process or it has exited (a zombie); tells a reused pid from the job's own."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    if not pid:
        return False
    if not Path("/proc").is_dir():  # no procfs: ask the system whether the pid exists
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return _started_ticks(pid) == state.get("started_ticks")


class Jobs:
    """The jobs of a folder of studies: start, read, stop and resume them. The server holds one;
    children it started are reaped here."""

    def __init__(self, studies: Path) -> None:
        self.studies = studies
        self.children: dict[str, subprocess.Popen] = {}

    def folder(self, study_dir: Path, job_id: str) -> Path:
        return study_dir / "jobs" / job_id

    def start(self, study: str, study_dir: Path, kind: str, args: list[str], **about: Any) -> dict[str, Any]:
        """Start `nas <args>` as a job of `study` (outputs in `study_dir`); `about`: what the
        pages show of it (trial, target...)."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
        folder = self.folder(study_dir, job_id)
        folder.mkdir(parents=True)
        job = {"id": job_id, "study": study, "kind": kind, "args": args, "created": time.time(), **about}
        write_json(folder / JOB, job)
        write_json(folder / STATE, {"state": "starting"})
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        with open(folder / LOG, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "nas.service.jobs", str(folder)],
                cwd=self.studies.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # the server's Ctrl-C is not the job's; stop() stops it
            )
        self.children[job_id] = child
        logger.info("job %s: nas %s (pid %d)", job_id, " ".join(args), child.pid)
        return self.read(folder)

    def all(self) -> list[dict[str, Any]]:
        """Every job of every study folder, newest first."""
        self._reap()
        jobs = [self.read(p.parent) for p in self.studies.glob(f"*/jobs/*/{JOB}")]
        return sorted(jobs, key=lambda j: j.get("created", 0), reverse=True)

    def find(self, job_id: str) -> Path | None:
        if not job_id.replace("-", "").isalnum():
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
        child = self.children.get(job_id)
        if child is not None:
            return child.poll() is None
        if state.get("state") == "starting":  # a child that never got to write its pid
            return False
        return _alive(state)

    def _reap(self) -> None:
        for job_id, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[job_id]

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
        """Ask the job to stop as Ctrl-C would (completed trials and the last checkpoint stay);
        terminate it when it has not stopped after `wait_s`."""
        job = self.read(folder)
        if job.get("state") not in ACTIVE:
            return job
        pid = job.get("pid") or getattr(self.children.get(job["id"]), "pid", None)
        if pid:
            _signal(pid, signal.SIGINT)
            deadline = time.monotonic() + wait_s
            while self.read(folder).get("state") in ACTIVE and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.read(folder).get("state") in ACTIVE:
                logger.warning("job %s did not stop after %.0f s; terminating it", job["id"], wait_s)
                _signal(pid, signal.SIGTERM)
        return self.read(folder)

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> None:
        """At the server's shutdown: stop the jobs it started (they show as stopped, and a
        distillation can be resumed)."""
        for job_id in list(self.children):
            folder = self.find(job_id)
            if folder is not None:
                self.stop(folder, wait_s)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(folder: Path) -> int:
    """The child: run the job's `nas` arguments with the command line's code, writing its
    state and progress into `folder`."""
    from nas import cli

    job = read_json(folder / JOB)
    state: dict[str, Any] = {
        "state": "running",
        "pid": os.getpid(),
        "started_ticks": _started_ticks(os.getpid()),
        "started": time.time(),
    }
    write_json(folder / STATE, state)
    result: dict[str, Any] = {}

    def progress(event: dict[str, Any]) -> None:
        event = {**event, "at": time.time()}
        if event.get("event") == "exported":
            result.update(export=event["export"], trial=event["trial"], command=event["command"])
        else:
            write_json(folder / PROGRESS, event)

    signal.signal(signal.SIGTERM, _interrupt)  # a terminated job stops as a stopped one does
    code = 1
    try:
        code = cli.main(job["args"], progress=progress)
    except SystemExit as exc:  # argparse refused the arguments
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - the job's state says how it ended
        logger.exception("job failed")
        state["error"] = f"{type(exc).__name__}: {exc}"
    ended = {0: "completed", INTERRUPTED_EXIT: "stopped"}.get(code, "failed")
    if ended == "failed" and "error" not in state:
        state["error"] = _error_line(folder / LOG) or f"exit code {code}"
    write_json(folder / STATE, {**state, "state": ended, "exit_code": code, "ended": time.time(), "result": result})
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _error_line(log: Path) -> str | None:
    """The command line's one-line error (`error: ...`), the last one in the log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1].removeprefix("error: ") if errors else None


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
