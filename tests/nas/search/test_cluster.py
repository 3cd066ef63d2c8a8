"""A real multi-node search: a Ray head and a second node (separate processes, each with one
CPU, on loopback), the study in a real PostgreSQL database, trials spread over both nodes, then
the second node killed mid-trial: its trial is recorded FAIL with the reason and re-sampled,
and the study completes."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from optuna.trial import TrialState

from nas.chaos import Run
from nas.spec import load_spec
from nas.study import distinct_complete, distinct_evaluated
from tests.conftest import write_spec
from tests.postgres import postgres_url  # noqa: F401 - a fixture

CLUSTER = """
import json, sys, time
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "kill":
        cluster.remove_node(worker, allow_graceful=False)
        print("killed", flush=True)
    else:
        break
ray.shutdown()
cluster.shutdown()
"""


def _line_with(stream, text: str) -> str:
    """The first line of `stream` holding `text` (Ray prints its own notices on the same stream)."""
    for line in stream:
        if text in line:
            return line[line.index(text):]
    return ""


@pytest.fixture
def cluster_env():
    """Ray on loopback (single-machine clusters bind 127.0.0.1) with a temp folder of its own,
    so that no other Ray on the machine finds this cluster."""
    folder = tempfile.mkdtemp(prefix="ray-")
    yield {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": folder}
    shutil.rmtree(folder, ignore_errors=True)


def test_two_nodes_postgresql_and_a_node_lost_mid_trial(tmp_path, teacher_dirs, postgres_url, cluster_env):  # noqa: F811
    path = write_spec(tmp_path, teacher_dirs["gpt2"], name="cluster")
    overrides = ["study.trials=6", "brief.steps=300", "resources.cpus=1", "study.concurrency=2"]
    spec = load_spec(path, overrides)
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cluster_env
    )
    search = None
    try:
        nodes = json.loads(_line_with(cluster.stdout, '{"address"'))
        command = ["search", str(path), "--address", nodes["address"], "--storage", postgres_url, "--no-report"]
        search = Run([*command, *overrides], env=cluster_env)  # its log is read as it comes
        deadline = time.time() + 600
        on_worker = []
        while not on_worker and search.proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name=spec.name, storage=postgres_url)
            except KeyError:
                continue
            on_worker = [t for t in distinct_complete(study) if t.user_attrs.get("ray_node") == nodes["worker"]]
        assert on_worker, "no trial completed on the second node: " + "".join(search.lines.queue)[-3000:]
        # The node's actor took the next trial as the first ended (Tune reuses actors): kill it mid-trial.
        cluster.stdin.write("kill\n")
        cluster.stdin.flush()
        assert "killed" in _line_with(cluster.stdout, "killed")
        assert search.finish(timeout=900) == 0, "".join(search.log)[-3000:]
    finally:
        if search is not None:
            search.kill()
        cluster.stdin.close()
        cluster.wait(timeout=120)
    study = optuna.load_study(study_name=spec.name, storage=postgres_url)
    evaluated = distinct_evaluated(study)  # trained to the end, or stopped at a rung
    assert len(evaluated) == 6
    assert {t.user_attrs["ray_node"] for t in evaluated} == {nodes["head"], nodes["worker"]}
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all("worker failed" in t.user_attrs["fail_reason"] for t in failed), [
        t.user_attrs for t in failed
    ]
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert not spec.out_dir.joinpath("optuna.db").exists()  # the study lives in PostgreSQL only
