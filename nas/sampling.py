"""The samplers a study may choose (`study.sampler`): how Optuna proposes the next
architecture from the trials stored so far, seeded by the study. Constraints reach every one
of them through the trials themselves (`Trial.set_constraint`, Optuna 5's successor of
`constraints_func`): TPE, NSGA-II and GP steer away from infeasible trials, random ignores them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

DEFAULT_SAMPLER = "tpe"


def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # constant_liar: trials still running count as bad, so parallel proposals differ.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(4, min(10, trials // 2)), constant_liar=True
    )


def _nsga2(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # Generations small enough that a study of a few dozen trials evolves at all.
    return optuna.samplers.NSGAIISampler(
        seed=seed, population_size=max(4, min(50, trials // 4))
    )


def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(
        seed=seed,
        n_startup_trials=max(4, min(10, trials // 2)),
        warn_independent_sampling=False,  # conditional parameters (per family) are sampled independently
    )


def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], Any]] = {
    "tpe": _tpe,
    "nsga2": _nsga2,
    "gp": _gp,
    "random": _random,
}


def make_sampler(name: str, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Optuna sampler `name` for a study of `trials` trials."""
    return SAMPLERS[name](seed, trials)


__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "make_sampler"]
