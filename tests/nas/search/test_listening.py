"""A search on a shared machine listens on 127.0.0.1 only, and never joins a cluster it was not
given: every listening socket of a running `nas search` and of the Ray processes it started."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from nas.spec import load_spec
from tests.conftest import write_spec

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of
    `root` and its descendants."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # SOCK_DGRAM
                found.append((name, c.laddr.ip, c.laddr.port))
    return found


pytestmark = pytest.mark.slow  # a real search with its Ray processes


def test_a_running_search_listens_on_loopback_only(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["gpt2"])
    spec = load_spec(path)
    # A cluster named in the environment is not joined without --address.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "search", str(path), "--no-report", "study.trials=2", "brief.steps=60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if "started trial" in line:
                break
        else:
            pytest.fail("".join(log[-30:]))
        time.sleep(2)  # the trial's worker is up
        sockets = listening(psutil.Process(proc.pid))
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # Ray's servers were seen
        assert [s for s in sockets if s[1] not in LOOPBACK] == []
        log += proc.stderr.readlines()
        assert proc.wait(timeout=600) == 0, "".join(log[-30:])
    finally:
        proc.kill()
    assert "starting Ray on 127.0.0.1" in "".join(log)
    assert (spec.out_dir / "optuna.db").exists()
