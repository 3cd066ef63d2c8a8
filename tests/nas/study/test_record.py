"""The stored record's rules, on trials made through Optuna: how each trial ended, which count
as evaluated architectures, repeats, the front, and the study's own attributes."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from nas.study import (
    StudyRecord,
    TrialRecord,
    distinct_complete,
    distinct_evaluated,
    find_duplicate,
    front_trials,
    trial_counts,
)
from nas.study._record import ARCH, DUPLICATE_OF, FAIL_REASON, NOT_TRAINED, PRUNED_AT, RECIPE

SPACE = {"layers": CategoricalDistribution([1, 2, 3])}


def _trial(state: TrialState, layers: int, values=None, constraint=None, **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        values=values,
        params={"layers": layers},
        distributions=SPACE,
        user_attrs={ARCH: {"layers": layers}, **attrs},
        system_attrs={"constraints": [constraint]} if constraint is not None else {},
    )


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for t in (
        _trial(TrialState.COMPLETE, 1, [3.0, 1.0], -1.0),  # 0: on the front
        _trial(TrialState.COMPLETE, 2, [1.0, 3.0], 0.5),  # 1: beyond a bound
        _trial(TrialState.COMPLETE, 1, [3.0, 1.0], -1.0, **{DUPLICATE_OF: 0}),  # 2: a repeat of 0
        _trial(TrialState.PRUNED, 3, None, None, **{PRUNED_AT: {"rung": 0, "step": 2}}),  # 3
        _trial(TrialState.PRUNED, 3, None, None, **{NOT_TRAINED: "too large", RECIPE: {"ce": 0.5}}),  # 4
        _trial(TrialState.FAIL, 2, None, None, **{FAIL_REASON: "out of memory"}),  # 5
        _trial(TrialState.COMPLETE, 2, [2.0, 2.0], -0.5),  # 6: on the front
    ):
        study.add_trial(t)
    return study


def test_each_trial_says_how_it_ended():
    study = _study()
    outcomes = [TrialRecord(t).outcome for t in study.trials]
    assert outcomes == ["complete", "infeasible", "repeat", "stopped at a rung", "not trained", "failed", "complete"]
    assert trial_counts(study) == {
        "trained": 3,
        "infeasible": 1,
        "stopped at a rung": 1,
        "not trained (size bounds)": 1,
        "failed": 1,
        "repeats": 1,
    }
    failed = TrialRecord(study.trials[5])
    assert failed.fail_reason == "out of memory" and failed.arch == {"layers": 2} and failed.recipe is None


def test_repeats_never_count_and_the_front_is_feasible():
    study = _study()
    assert [t.number for t in distinct_complete(study)] == [0, 1, 6]
    assert [t.number for t in distinct_evaluated(study)] == [0, 1, 6, 3]  # a trial stopped at a rung counts, after
    assert sorted(t.number for t in front_trials(study)) == [0, 6]


def test_a_repeat_is_the_same_architecture_with_the_same_recipe():
    study = _study()
    assert find_duplicate(study, {"layers": 1}, number=99).number == 0
    assert find_duplicate(study, {"layers": 3}, number=99).number == 3  # stopped at a rung: still its twin
    assert find_duplicate(study, {"layers": 3}, number=99, recipe={"ce": 0.5}).number == 4
    assert find_duplicate(study, {"layers": 1}, number=0) is None  # itself
    assert find_duplicate(study, {"layers": 4}, number=99) is None


def test_the_study_keeps_each_full_run_under_its_own_key():
    study = _study()
    record = StudyRecord(study)
    assert record.distilled == {} and record.teacher_metrics == {}
    record.record_distilled(0, {"export": "a"})
    record.record_distilled(6, {"export": "b"})
    study.set_user_attr("distilled", {"1": {"export": "old"}})  # as studies made before kept them
    assert StudyRecord(study).distilled == {"1": {"export": "old"}, "0": {"export": "a"}, "6": {"export": "b"}}
    record.stamp(["perplexity", "params"], "causal-lm", {"params": 5e6}, "tpe")
    record.stamp(["perplexity", "params"], "causal-lm", {"params": 5e6}, "gp")  # a resumed study keeps its sampler
    assert (record.task.name, record.sampler, record.constraints) == ("causal-lm", "tpe", {"params": 5e6})
