"""No number changes by accident: three tiny studies at a fixed seed (one trial at a time, so
that the sampler's proposals do not depend on timing) store the same attributes, to 1e-6, as
the runs recorded in tests/data/golden_studies.json. Timings (latency, training seconds) are
measurements of the machine and are left out."""

import json
import math
from pathlib import Path

import pytest

from nas.search import run_search
from nas.spec import load_spec
from tests.conftest import write_embedding_spec, write_spec

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_studies.json").read_text())
TIMINGS = {"latency_ms", "latency_ms_b32", "train_seconds"}
SLICED = ["study.trials=3", "space.families=['llama']", "space.head_dim=[8]", "space.heads=[2, 4]"]
SLICED += ["space.init=['random', 'teacher']", "space.layer_pick=['even', 'first', 'every_other']", "distill.steps=6"]


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
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", ["causal", "sliced", "embedding"])
def test_tiny_studies_give_the_recorded_numbers(tmp_path, teacher_dirs, sentence_teacher, name):
    path, overrides = {
        "causal": (lambda: write_spec(tmp_path, teacher_dirs["gpt2"], name="causal"), []),
        "sliced": (lambda: write_spec(tmp_path, teacher_dirs["llama"], name="sliced"), SLICED),
        "embedding": (lambda: write_embedding_spec(tmp_path, sentence_teacher, name="embedding"), []),
    }[name]
    study = run_search(load_spec(path(), ["study.concurrency=1", *overrides]))
    want = GOLDEN[name]
    _close(study.user_attrs["teacher_metrics"], want["teacher_metrics"], "teacher_metrics")
    got = [
        {"number": t.number, "state": t.state.name, "params": t.params, "user_attrs": t.user_attrs}
        for t in study.trials
    ]
    _close(got, want["trials"], "trials")
