"""Full runs on several workers (Ray Train, DistributedDataParallel over gloo, on loopback):
two CPU workers follow the one-process run's loss curve at the same global batch, the export
loads with plain transformers, and a worker killed mid-run is recovered from the run's last
checkpoint, ending with the weights of an uninterrupted run."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import psutil
import pytest
import torch
from safetensors.torch import load_file

from nas.full import checkpoint_dir, distill_arch, export_dir
from nas.prepare import prepare_study
from nas.search import run_search
from nas.spec import load_spec
from nas.study import TrialRecord, distilled_records, distinct_complete
from tests.conftest import write_spec

pytestmark = pytest.mark.slow  # Ray Train jobs

STEPS = 40
FULL = [f"full.steps={STEPS}", "full.batch_size=8", "full.grad_accum=2", "full.eval_every=20", "full.checkpoint_every=5"]
FULL += ["full.lr=3e-3"]
FIXED = ["resources.precision='fp32'", "resources.cpus=1"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, teacher_dirs, ray_local):
    folder = tmp_path_factory.mktemp("parallel")
    path = write_spec(folder, teacher_dirs["llama"], name="par")
    spec = load_spec(path, ["study.trials=1", *FIXED, *FULL])
    study = run_search(spec)
    return path, spec, distinct_complete(study)[0]


def test_two_workers_follow_the_one_process_run(searched, tmp_path):
    _, spec, trial = searched
    arch, data = TrialRecord(trial).arch, prepare_study(spec)
    runs = {}
    for workers in (1, 2):
        one = dataclasses.replace(spec, full=dataclasses.replace(spec.full, workers=workers))
        runs[workers] = distill_arch(one, arch, data, checkpoint_dir=tmp_path / f"w{workers}")
    assert [p.name.split("-")[0] for p in (spec.out_dir / "ray").iterdir()].count("distill") == 1  # one Ray Train job
    solo, pair = runs[1].result, runs[2].result
    print("largest relative difference of the losses:", np.max(np.abs(np.subtract(pair.losses, solo.losses)) / solo.losses))
    assert pair.steps == solo.steps == STEPS and len(pair.losses) == STEPS
    # the same global batch of 8 blocks in micro-batches of 4, each split 2 + 2: the same curve
    # up to float summation order
    np.testing.assert_allclose(pair.losses, solo.losses, rtol=2e-3)
    assert [s for s, _ in pair.evals] == [s for s, _ in solo.evals] == [20, 40]
    np.testing.assert_allclose([v for _, v in pair.evals], [v for _, v in solo.evals], rtol=2e-3)
    assert runs[2].metrics["perplexity"] == pytest.approx(runs[1].metrics["perplexity"], rel=5e-3)


def _nas(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=timeout)


def _train_workers():
    return [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def test_a_killed_worker_is_recovered_and_the_run_ends_as_an_uninterrupted_one(searched):
    from transformers import AutoModelForCausalLM

    path, spec, trial = searched
    # a quarter of the batches on the student's own samples: every worker decides alike, each
    # samples with its own random state, which the checkpoints keep
    args = ["distill", str(path), "--trial", str(trial.number), "--workers", "2", "--overwrite", *FIXED, *FULL, "full.on_policy=0.25"]
    whole = _nas(*args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = load_file(export_dir(spec, trial.number) / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(export_dir(spec, trial.number))
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()

    last = checkpoint_dir(spec, trial.number) / "last.pt"
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "nas", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    step = torch.load(last, weights_only=True)["state"]["step"]
    workers = _train_workers()
    assert proc.poll() is None and 0 < step < STEPS and len(workers) == 2, (step, workers)
    workers[-1].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "a worker failed: Ray Train started the workers again, from the run's last checkpoint" in out
    weights = load_file(export_dir(spec, trial.number) / "model.safetensors")
    for k in reference:  # resumed from the checkpoint: the same data order, random state and weights
        torch.testing.assert_close(weights[k], reference[k], rtol=1e-5, atol=1e-6)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    record = distilled_records(study)[str(trial.number)]  # the run is recorded as a one-process run is
    assert record["precision"] == "fp32" and record["steps"] == STEPS
