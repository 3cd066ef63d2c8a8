"""Each private API of Optuna and Ray that `nas._compat` uses, checked where it lives: an
upgrade that moves one fails here, by name, instead of in a search."""

from __future__ import annotations

import threading

import numpy as np
import optuna
import pytest

from nas import _compat
from nas.dominance import hypervolume

SPACE = {"x": optuna.distributions.FloatDistribution(0, 1)}


def _study(n: int = 3) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(values=[float(i), float(n - i)], params={"x": i / n}, distributions=SPACE))
    return study


def test_the_storage_of_a_study_writes_to_any_of_its_trials():
    study = _study()
    running = study.ask()  # as a Ray trial's, told by another process
    storage = _compat.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    storage.set_trial_user_attr(_compat.trial_id(study, running.number), "seen", True)
    assert study.trials[running.number].user_attrs == {"seen": True} and not study.trials[0].user_attrs


def test_optuna_search_keeps_the_live_trial_of_each_tune_trial():
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(space=SPACE, metric="v", mode="min")
    search.suggest("tune-1")
    trial = _compat.optuna_search_trial(search, "tune-1")
    assert isinstance(trial, optuna.Trial) and "x" in trial.params


def test_optunas_hypervolume_is_exact_in_two_and_three_objectives():
    square = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert _compat.hypervolume(square, np.array([4.0, 4.0])) == pytest.approx(6.0)
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), np.array([2.0, 3.0, 4.0])) == pytest.approx(6.0)
    assert hypervolume(np.array([[5.0, 5.0]]), np.array([4.0, 4.0])) == 0.0  # beyond the reference


def test_samplers_read_a_studys_trials_through_the_view():
    """GPSampler reads the COMPLETE trials it models through `TRIALS_READER`: a view that adds
    one is seen by it (and by TPE's and NSGA-II's readers too)."""
    study = _study()
    extra = optuna.trial.create_trial(values=[9.0, 9.0], params={"x": 0.5}, distributions=SPACE)
    asked = []

    def trials(stored, states):
        asked.append(states)
        return [*stored, extra]

    view = _compat.StudyView(study, trials)
    assert hasattr(optuna.Study, _compat.TRIALS_READER)
    assert len(view._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) == 4
    sampler = optuna.samplers.GPSampler(seed=0, n_startup_trials=1)
    trial = study.ask()
    sampler.sample_relative(view, _compat.storage_of(study).get_trial(_compat.trial_id(study, trial.number)), SPACE)
    assert asked, "GPSampler no longer reads trials through Study._get_trials: nas.search.sampling's GP view sees nothing"


def test_ray_has_its_single_machine_switch(monkeypatch):
    monkeypatch.delenv(_compat.RAY_LOOPBACK_ONLY, raising=False)
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    _compat.ray_single_machine()
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    import os

    assert os.environ[_compat.RAY_LOOPBACK_ONLY] == "0"


def test_a_searcher_whose_sampler_cannot_pickle_still_pickles():
    """Tune pickles its searcher when a run starts; a sampler holding a lock stays out."""
    import ray.cloudpickle as cloudpickle
    from ray.tune.search.optuna import OptunaSearch

    from nas.search._ray import StudySearcher
    from nas.spec import Constraints

    sampler = optuna.samplers.RandomSampler()
    sampler.lock = threading.Lock()  # as optuna 5.1's NSGA-II sampler holds one
    inner = OptunaSearch(space=SPACE, metric=["a", "b"], mode=["min", "min"], sampler=sampler)
    searcher = StudySearcher(inner, _study(), ["a", "b"], (), Constraints(), None)
    with pytest.raises(TypeError):
        cloudpickle.dumps(inner)
    assert cloudpickle.loads(cloudpickle.dumps(searcher)).inner is None
