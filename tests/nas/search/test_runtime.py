"""The edge runtime in the search: trials measured in ONNX Runtime when the spec asks, runtime
metrics as objectives and constraints, in real tiny searches through Ray Tune + Optuna on CPU."""

import math

import pytest
from optuna.trial import TrialState

from nas.pareto import front_table
from nas.prepare import prepare_study
from nas.search import run_search
from nas.search._driver import trial_plan
from nas.search.trial import run_trial
from nas.spec import load_spec
from nas.study import distinct_complete, front_trials, is_feasible
from tests.conftest import write_spec

BOUND = "runtime_int8_latency_ms"
ARCH = {
    "family": "gpt2", "layers": 1, "heads": 2, "kv_heads": 2, "head_dim": 8, "ffn_ratio": 2.0,
    "tie_embeddings": True, "init": "random", "layer_pick": "even",
}  # fmt: skip


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory, teacher_dirs):
    return write_spec(tmp_path_factory.mktemp("rt"), teacher_dirs["gpt2"], name="rt")


def test_a_trial_is_measured_in_the_runtime_and_a_bound_on_its_speed_is_checked_before_training(spec_path):
    spec = load_spec(spec_path, ["runtime.measure=['int8']", "multi_fidelity.enabled=false"])
    plan = trial_plan(spec, prepare_study(spec))
    result = run_trial(ARCH, plan)
    runtime = {m.name for m in spec.task.metrics if m.runtime == "int8"}
    assert runtime <= set(result) and all(math.isfinite(result[n]) for n in runtime)
    assert result["runtime_int8_file_mb"] > 0 and result["runtime_int8_perplexity"] > 1
    assert "runtime_fp32_latency_ms" not in result  # measured at the precisions asked only

    tight = load_spec(spec_path, [f"constraints.{BOUND}=1e-6", "multi_fidelity.enabled=false"])
    assert tight.runtime.measure == ("int8",)  # a bound names the precision: measured without [runtime]
    refused = run_trial(ARCH, trial_plan(tight, prepare_study(tight)))
    assert refused["not_trained"].startswith(f"infeasible before training: {BOUND}")
    assert "train_steps" not in refused and "runtime_int8_perplexity" not in refused


@pytest.mark.usefixtures("ray_local")
def test_a_search_bounded_on_runtime_latency_keeps_no_infeasible_trial_on_the_front(spec_path):
    free = load_spec(spec_path, ["study.trials=4", "study.concurrency=1", "runtime.measure=['int8']", "study.name=rt-free"])
    searched = run_search(free)
    latencies = sorted(t.user_attrs[BOUND] for t in distinct_complete(searched))
    header = front_table(searched).splitlines()[1]  # measured, not objectives: shown beside them
    assert "runtime_int8_latency_ms" in header and "runtime_int8_perplexity" in header
    bound = latencies[len(latencies) // 2]
    bounded = load_spec(
        spec_path,
        ["study.trials=4", "study.concurrency=1", "study.name=rt-bound", f"constraints.{BOUND}={bound}", f"objectives.size=['{BOUND}']"],
    )  # the runtime's latency an objective too: known at every rung
    study = run_search(bounded)
    measured = [t for t in study.trials if BOUND in t.user_attrs and "duplicate_of" not in t.user_attrs]
    assert measured
    for t in measured:
        if t.user_attrs[BOUND] > bound:
            assert t.state == TrialState.PRUNED and "train_steps" not in t.user_attrs, t.user_attrs
        elif "pruned_at" not in t.user_attrs:  # trained to the end, not stopped at a rung
            assert t.user_attrs.get("train_steps") and "runtime_int8_perplexity" in t.user_attrs
    front = front_trials(study)
    assert all(t.user_attrs[BOUND] <= bound and is_feasible(t) for t in front)
    assert front or all(t.user_attrs[BOUND] > bound for t in measured)
