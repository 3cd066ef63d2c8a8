import json

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from nas.pareto import front_json, front_rows, front_table
from nas.search import front_trials


def _study(points, duplicate_of=None):
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_metric_names(["perplexity", "params"])
    for i, (ppl, params) in enumerate(points):
        attrs = {"arch": {"layers": i}, "arch_short": f"arch{i}", "perplexity": ppl, "params": params}
        if duplicate_of and i in duplicate_of:
            attrs["duplicate_of"] = duplicate_of[i]
        study.add_trial(
            create_trial(
                params={"layers": i},
                distributions={"layers": IntDistribution(0, 99)},
                values=[ppl, params],
                user_attrs=attrs,
            )
        )
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "NaN"}))
    return study


def test_front_is_the_non_dominated_complete_trials():
    #          0 front     1 dominated by 0  2 front     3 front      4 dominated by 2
    study = _study([(100.0, 10), (120.0, 12), (80.0, 20), (200.0, 5), (90.0, 25)])
    assert sorted(t.number for t in front_trials(study)) == [0, 2, 3]
    rows = front_rows(study)
    assert [r["trial"] for r in rows] == [3, 0, 2]  # smallest first
    assert rows[0]["objectives"] == {"perplexity": 200.0, "params": 5}


def test_repeated_architectures_appear_once():
    study = _study([(100.0, 10), (100.0, 10), (80.0, 20)], duplicate_of={1: 0})
    assert sorted(t.number for t in front_trials(study)) == [0, 2]


def test_table_and_json():
    study = _study([(100.0, 10), (80.0, 20)])
    table = front_table(study)
    assert "perplexity ↓" in table and "arch0" in table and "arch1" in table
    data = json.loads(front_json(study))
    assert data["directions"] == ["minimize", "minimize"] and len(data["front"]) == 2


def test_empty_study_has_an_empty_front():
    study = optuna.create_study(directions=["minimize", "minimize"])
    assert front_trials(study) == [] and "no complete trial" in front_table(study)
