"""The Pareto-aware successive-halving scheduler: by its decision rule, and in a real Ray Tune
run with a scripted trainable."""

import numpy as np
import pytest

from nas.search.scheduler import FINAL, RUNG, RungBoard, pareto_asha, survives


def test_a_non_dominated_point_always_survives():
    points = np.array([[1.0, 5.0], [5.0, 1.0], [3.0, 3.0], [4.0, 4.0], [6.0, 6.0]])
    assert [survives(points, i, 2.0) for i in range(5)] == [True, True, True, False, False]
    assert survives(points[:1], 0, 2.0)  # the first trial at a rung goes on


def test_the_best_share_of_the_dominated_survives_when_the_front_is_small():
    points = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    # One on the front; ceil(4 / 2) = 2 go on: the front point and the best of the rest.
    assert [survives(points, i, 2.0) for i in range(4)] == [True, True, False, False]


def test_the_board_reads_directions_and_judges_each_rung_apart():
    board = RungBoard(["cosine", "params"], ["max", "min"], reduction=2.0)
    assert board.goes_on("a", 0, {"cosine": 0.9, "params": 10})
    assert not board.goes_on("b", 0, {"cosine": 0.5, "params": 20})  # dominated: worse and larger
    assert board.goes_on("c", 0, {"cosine": 0.4, "params": 5})  # smaller: on the front
    assert board.goes_on("b", 1, {"cosine": 0.5, "params": 20})  # alone at rung 1
    with pytest.raises(ValueError):
        RungBoard(["cosine"], ["max", "min"])


SCRIPT = {  # quality (lower is better) at rungs 0 and 1 and at the end, and size
    "first": ([1.0, 0.9, 0.8], 10.0),
    "dominated": ([2.0, 1.9, 1.8], 20.0),  # worse and larger than "first" at rung 0
    "small": ([3.0, 2.5, 2.0], 5.0),  # worse but smaller: on the front at rung 0
}


def _scripted(config):
    from ray import tune

    curve, size = SCRIPT[config["name"]]
    for rung, q in enumerate(curve[:-1]):
        tune.report({"quality": q, "size": size, RUNG: rung, FINAL: False, "name": config["name"]})
    tune.report({"quality": curve[-1], "size": size, FINAL: True, "name": config["name"]})


def test_a_real_tune_run_stops_the_dominated_trial_and_keeps_the_others(tmp_path, ray_local):
    from ray import tune

    scheduler = pareto_asha(["quality", "size"], ["min", "min"], reduction=2.0)
    tuner = tune.Tuner(
        _scripted,
        param_space={"name": tune.grid_search(list(SCRIPT))},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, metric="quality", mode="min", max_concurrent_trials=1
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    last = {r.metrics["name"]: r.metrics for r in results}
    assert last["first"][FINAL] and last["small"][FINAL]
    assert not last["dominated"][FINAL] and last["dominated"][RUNG] == 0
    assert list(scheduler.stopped.values()) == [0]
