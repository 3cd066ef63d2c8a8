"""How a job ended is data its child process records (`nas.service.jobs.run`): the command's
one-line error for bad input and for arguments argparse refuses, read from `state.json`,
never from the job's log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.service.jobs import JOB, LOG, STATE, Jobs, write_json

ROOT = Path(__file__).resolve().parents[3]


def _run_job(folder: Path, args: list[str]) -> dict:
    """A job folder as the server writes it, run as the server runs it; its recorded state."""
    folder.mkdir(parents=True)
    write_json(folder / JOB, {"id": folder.name, "study": "x", "kind": args[0], "args": args, "created": 0.0})
    with open(folder / LOG, "wb") as log:
        subprocess.run([sys.executable, "-P", "-m", "nas.service.jobs", str(folder)], cwd=ROOT, stdout=log, stderr=log, timeout=300, check=True)
    return json.loads((folder / STATE).read_text())


@pytest.mark.parametrize(
    "args, error",
    [
        (["search", "nope.toml"], "nope.toml: SPEC: file not found (a study spec is a .toml file"),
        (["search", "studies/demo.toml", "--bogus"], "unrecognized arguments: --bogus"),
        (["fidelity", "studies/demo.toml"], "studies/demo.toml: fidelity: the command is now rank-check"),
    ],
    ids=["bad-spec", "refused-arguments", "renamed-command"],
)
def test_a_failed_job_records_its_error_line(tmp_path, args, error):
    folder = tmp_path / "studies" / "x" / "jobs" / "job-1"
    state = _run_job(folder, args)
    assert state["state"] == "failed" and state["exit_code"] == 2 and state["result"] == {}
    assert state["error"].startswith(error), state["error"]
    (folder / LOG).write_text("error: something else entirely\n")  # the record stands without the log
    assert Jobs(tmp_path / "studies").read(folder)["error"] == state["error"]
