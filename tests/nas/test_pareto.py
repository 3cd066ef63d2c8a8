import json

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from nas.pareto import front_json, front_rows, front_table
from nas.study import front_trials


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


def test_distilled_students_add_one_column_with_or_without_a_teacher_row():
    study = _study([(100.0, 10), (80.0, 20)])
    study.set_user_attr("distilled", {"0": {"metrics": {"perplexity": 60.0}, "export": "students/0"}})
    for teacher in (None, {"perplexity": 20.0, "params": 99}):
        if teacher:
            study.set_user_attr("teacher_metrics", teacher)
        lines = front_table(study).splitlines()[3:]  # title, header, rule
        assert len(lines) == 2 + bool(teacher) and [len(line.split()) for line in lines[:2]] == [5, 5], lines
        assert lines[0].split()[-1] == "60.00" and lines[1].split()[-1] == "-"
        if teacher:  # no architecture; the teacher's score stands in the full column too
            assert lines[2].split() == ["teacher", "20.00", "99", "20.00"]
