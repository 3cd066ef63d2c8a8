"""A real `nas serve` over a folder with one tiny causal-LM study, on a free loopback port."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import save_tiny_teacher, write_spec

FULL = """
[full]
steps = 40
batch_size = 4
eval_every = 20
checkpoint_every = 20

[[eval]]
name = "topics"
source = "pydoc-topics"
eval_blocks = 4
"""


def studies_folder(root: Path, tokenizer) -> Path:
    """`root/studies/` with tiny.toml: a 2-layer GPT-2 teacher, 3 trials of 4 steps and an
    extra evaluation set (Python's documentation topics)."""
    studies = root / "studies"
    studies.mkdir(parents=True)
    teacher = save_tiny_teacher(root / "teacher", "gpt2", tokenizer)
    write_spec(studies, teacher, name="tiny", extra=FULL)
    return studies


class Server:
    """`nas serve` as a child process; `url` once it listens."""

    def __init__(self, studies: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.studies = studies
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nas", "serve", "--studies", str(studies), "--port", "0", *args],
            cwd=studies.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("serving "):
                self.url = line.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
                return
        self.stop()
        raise AssertionError("nas serve did not start:\n" + "\n".join(self.output))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            self.lines.put(line.rstrip())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_job(client: httpx.Client, job_id: str, until: object = None, timeout: float = 300) -> dict:
    """Poll a job until it ends (or `until(job)` holds); its last reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if (until(job) if callable(until) else job["state"] not in ("starting", "running")):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s:\n" + "\n".join(job.get("log", [])))


@pytest.fixture
def studies(tmp_path, tokenizer) -> Path:
    return studies_folder(tmp_path, tokenizer)


@pytest.fixture
def server(studies) -> Iterator[Server]:
    s = Server(studies)
    yield s
    s.stop()
