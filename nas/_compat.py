"""Every use of Optuna's and Ray's private APIs, in one place. Each has no public equivalent
(said where it is used) and a test in `tests/nas/test_compat.py` that fails loudly when an
upgrade moves it, instead of a search that breaks where nobody looks."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import optuna


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes. Optuna's public API writes only to the trial being
    run; a trial told by another process (a Ray trial, a killed run) is reached through the
    storage, and OptunaSearch takes the storage of the study it continues."""
    return study._storage


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study` (public storage methods take ids)."""
    storage = storage_of(study)
    return storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def optuna_search_trial(searcher: Any, trial_id: str) -> optuna.Trial:
    """The live Optuna trial that Ray Tune's OptunaSearch asked for Tune trial `trial_id`: its
    constraint values must be set before OptunaSearch tells it (no public accessor)."""
    return searcher._ot_trials[trial_id]


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Optuna's own hypervolume (WFG; exact in 2-D), of points to minimize that all lie below
    `reference`. Optuna uses it for its samplers and `optuna.visualization` but does not export it."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(points, reference))


TRIALS_READER = "_get_trials"
"""The method through which Optuna's samplers read a study's trials (GPSampler among them):
a study view that overrides it shows a sampler other trials than the stored ones."""


class StudyView:
    """A study whose trials, as a sampler reads them (`TRIALS_READER`), come from `trials`
    (a function of the stored ones and the states asked for); everything else is the study's."""

    def __init__(self, study: optuna.Study, trials: Any) -> None:
        self._study, self._trials = study, trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[Any]:
        stored = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return self._trials(stored, states)


RAY_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for clusters of several machines, read by the processes Ray starts"""


def ray_single_machine() -> None:
    """Put the Ray this process starts in its single-machine mode, in which it binds its servers
    to 127.0.0.1 instead of the machine's routable address. Ray reads the switch when it starts
    (from an environment variable in the processes it starts, from a module constant in this
    one, whenever Ray was imported); there is no `ray.init` argument for it."""
    os.environ[RAY_LOOPBACK_ONLY] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


__all__ = [
    "RAY_LOOPBACK_ONLY",
    "StudyView",
    "hypervolume",
    "optuna_search_trial",
    "ray_single_machine",
    "storage_of",
    "trial_id",
]
