"""No number changes by accident: three tiny studies at a fixed seed (one trial at a time, so
that the sampler's proposals do not depend on timing) store the same attributes as the runs
recorded in tests/data/golden_studies.json: everything but floats exactly, floats to a relative
1e-4. Float sums reordered by another library release or CPU move a value by about 1e-6; one
step of training more or less moves some metric of every trial by over 1e-3 (the second test
checks that on the record), so a real change of behaviour cannot hide inside the tolerance.
Timings (latency, training seconds) are measurements of the machine and are left out. The
numbers are recorded at `[resources] precision = "fp32"`, which the studies pin: "auto" is
bf16 on CPUs that compute it natively and fp32 on others."""

import json
import math
from pathlib import Path

import pytest

from nas.search import run_search
from nas.spec import load_spec
from tests.conftest import write_embedding_spec, write_spec

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_studies.json").read_text())
TIMINGS = {"latency_ms", "latency_ms_b32", "train_seconds", "phase_seconds", "peak_rss_mb"}
REL_TOL = 1e-4
SLICED = ["study.trials=3", "space.families=['llama']", "space.head_dim=[8]", "space.heads=[2, 4]"]
SLICED += ["space.init=['random', 'teacher']", "space.layer_pick=['even', 'first', 'every_other']", "brief.steps=6"]


def _close(got, want, where):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(want) <= set(got), (where, sorted(set(want) - set(got or {})))
        for k in want:
            if k not in TIMINGS:
                _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=1e-9), (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_one_step_of_training_moves_the_recorded_numbers_beyond_the_tolerance(name):
    """Between consecutive rungs (training steps) of every recorded trial, the metric that
    moved most moved by at least 10 times the tolerance."""
    for trial in GOLDEN[name]["trials"]:
        rungs = trial["user_attrs"].get("rungs", [])
        for before, after in zip(rungs, rungs[1:]):
            moved = max(abs(after[k] - v) / abs(v) for k, v in before.items() if k != "step" and v)
            assert moved >= 10 * REL_TOL, (name, trial["number"], before["step"], moved)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", ["causal", "sliced", "embedding"])
def test_tiny_studies_give_the_recorded_numbers(tmp_path, teacher_dirs, sentence_teacher, name):
    path, overrides = {
        "causal": (lambda: write_spec(tmp_path, teacher_dirs["gpt2"], name="causal"), []),
        "sliced": (lambda: write_spec(tmp_path, teacher_dirs["llama"], name="sliced"), SLICED),
        "embedding": (lambda: write_embedding_spec(tmp_path, sentence_teacher, name="embedding"), []),
    }[name]
    study = run_search(load_spec(path(), ["study.concurrency=1", "resources.precision='fp32'", *overrides]))
    want = GOLDEN[name]
    _close(study.user_attrs["teacher_metrics"], want["teacher_metrics"], "teacher_metrics")
    got = [
        {"number": t.number, "state": t.state.name, "params": t.params, "user_attrs": t.user_attrs}
        for t in study.trials
    ]
    _close(got, want["trials"], "trials")
