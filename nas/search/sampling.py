"""The samplers a study may choose (`study.sampler`): how Optuna proposes the next
architecture from the trials stored so far, seeded by the study. Constraints reach every one
of them through the trials themselves (`Trial.set_constraint`, Optuna 5's successor of
`constraints_func`): TPE, NSGA-II and GP steer away from infeasible trials, random ignores them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas._compat import StudyView

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


def stopped_as_complete(study: optuna.Study) -> list[FrozenTrial]:
    """The study's PRUNED trials as a model-based sampler may read them: COMPLETE, at the
    quality they had where they stopped (a trial stopped at a rung, `rungs`) and their size; a
    metric they never measured (a trial not trained for its size) at the worst value of any
    COMPLETE trial. Repeats of an earlier architecture are left out (the twin speaks for them)."""
    from nas.study import TrialRecord  # here: the study package reads specs, which read this module

    names = study.metric_names or []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not names or not complete:
        return []
    worst = [
        (max if d == optuna.study.StudyDirection.MINIMIZE else min)(t.values[i] for t in complete)
        for i, d in enumerate(study.directions)
    ]
    constrained = any(t.constraints for t in complete)
    shown = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if TrialRecord(t).is_repeat or bool(t.constraints) != constrained:
            continue  # GPSampler needs every trial it reads to carry constraints, or none
        at = {**t.user_attrs, **(TrialRecord(t).rungs or [{}])[-1]}
        values = []
        for i, name in enumerate(names):
            try:
                value = float(at[name])
            except (KeyError, TypeError, ValueError):
                value = math.nan
            values.append(value if math.isfinite(value) else worst[i])
        shown.append(
            optuna.trial.create_trial(
                values=values, params=t.params, distributions=t.distributions,
                user_attrs=t.user_attrs, system_attrs=t.system_attrs,
            )
        )
    return shown


class GPSamplerSeeingStopped(optuna.samplers.GPSampler):
    """Optuna's GPSampler, told about trials stopped at a rung. GPSampler fits its model on
    COMPLETE trials only, so an architecture that multi-fidelity stopped stays where the
    acquisition peaks and is proposed again and again, each time a repeat that teaches nothing
    (on the sampler benchmark, a GP search with multi-fidelity stalled at 24 distinct
    architectures in 150 proposals). Here the model sees a stopped trial at the quality it had
    when it was stopped, which is worse than it would have ended: it was dominated there. TPE
    ranks pruned trials below complete ones in the same spirit."""

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(StudyView(study, _with_stopped(study)), trial, search_space)


def _with_stopped(study: optuna.Study) -> Callable[[list[FrozenTrial], Any], list[FrozenTrial]]:
    """The trials a sampler reads: with COMPLETE ones asked for, the stopped ones as well."""

    def trials(stored: list[FrozenTrial], states: Any) -> list[FrozenTrial]:
        if states is not None and TrialState.COMPLETE in states:
            return [*stored, *stopped_as_complete(study)]
        return stored

    return trials


def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return GPSamplerSeeingStopped(
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
