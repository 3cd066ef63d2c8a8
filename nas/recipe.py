"""The recipe searched with the architecture (`[space.recipe]`): how a student is taught (its
divergence, temperature, cross-entropy weight, intermediate-layer weight and on-policy share),
sampled by Optuna beside its shape, recorded per trial and reused by `nas distill`."""

from __future__ import annotations

import dataclasses
from typing import Any

from distill import Budget, LossConfig
from distill.losses import LOSSES
from distill.objective import allowed_terms

INTERMEDIATE = "hidden"
"""The term whose weight `intermediate` searches (the hidden-state MSE of mapped layers)."""


def divergence_terms(task: Any) -> list[str]:
    """The task's terms that compare next-token distributions (they need the teacher's top k alone)."""
    return [n for n in allowed_terms(task) if LOSSES[n].needs == ("topk",)]


@dataclasses.dataclass(frozen=True)
class RecipeSpace:
    """`[space.recipe]`: the choices of each searchable part of the recipe; a part left out
    keeps the spec's `[loss]` and budgets."""

    loss: tuple[str, ...] = ()
    """divergence terms (forward_kl, reverse_kl, jsd, skew_kl, ...): one replaces the loss's divergences"""
    temperature: tuple[float, ...] = ()
    """softmax temperatures of the divergence (the teacher's outputs are cached at each)"""
    ce: tuple[float, ...] = ()
    """weights of the cross-entropy on the reference"""
    intermediate: tuple[float, ...] = ()
    """weights of the hidden-state term on mapped layers (`hidden`)"""
    on_policy: tuple[float, ...] = ()
    """shares of on-policy batches (the brief run's and the full run's)"""

    def __post_init__(self) -> None:
        for name in ("temperature", "ce", "intermediate", "on_policy"):
            values = getattr(self, name)
            if any(v < 0 for v in values) or (name == "temperature" and any(v <= 0 for v in values)):
                raise ValueError(f"{name}: must be {'> 0' if name == 'temperature' else '>= 0'}, got {list(values)}")
        if any(v > 1 for v in self.on_policy):
            raise ValueError(f"on_policy: shares of the batches, between 0 and 1, got {list(self.on_policy)}")

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    def check(self, task: Any) -> None:
        """Raise ValueError("<key>: ...") for a choice the task cannot train with."""
        allowed = divergence_terms(task)
        wrong = [n for n in self.loss if n not in allowed]
        if wrong:
            raise ValueError(f"loss: {wrong[0]!r} is not a divergence of task {task.name}; allowed: {', '.join(allowed)}")
        if self.temperature and "temperature" not in {f.name for f in dataclasses.fields(task.loss_params)}:
            raise ValueError(f"temperature: task {task.name}'s loss has no temperature")
        if self.ce and "ce" not in allowed_terms(task):
            raise ValueError(f"ce: task {task.name} has no cross-entropy term")
        if self.intermediate and INTERMEDIATE not in allowed_terms(task):
            raise ValueError(f"intermediate: task {task.name} has no intermediate-layer terms")
        if any(self.on_policy) and not task.samples_on_policy:
            raise ValueError(f"on_policy: task {task.name} has no outputs of its own to learn from")

    def sample(self, trial: Any) -> dict[str, Any]:
        """One recipe: a choice of each searchable part (Optuna parameters `recipe_<part>`)."""
        return {
            f.name: trial.suggest_categorical(f"recipe_{f.name}", list(getattr(self, f.name)))
            for f in dataclasses.fields(self)
            if getattr(self, f.name)
        }


def apply_recipe(loss: LossConfig, budget: Budget, recipe: dict[str, Any] | None) -> tuple[LossConfig, Budget]:
    """The loss and budget of a trial of `recipe` (None or empty: the spec's own). The chosen
    divergence takes the weight of the spec's divergences together (1 where it has none)."""
    if not recipe:
        return loss, budget
    weights, params = dict(loss.weights), dict(loss.params)
    if "loss" in recipe:
        kinds = [n for n, t in LOSSES.items() if t.needs == ("topk",)]
        total = sum(weights.get(n, 0.0) for n in kinds) or 1.0
        weights = {n: w for n, w in weights.items() if n not in kinds} | {recipe["loss"]: total}
    if "temperature" in recipe:
        params["temperature"] = float(recipe["temperature"])
    if "ce" in recipe:
        weights["ce"] = float(recipe["ce"])
    if "intermediate" in recipe:
        weights[INTERMEDIATE] = float(recipe["intermediate"])
    if "on_policy" in recipe:
        budget = dataclasses.replace(budget, on_policy=float(recipe["on_policy"]))
    return dataclasses.replace(loss, weights=weights, params=params), budget


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    """A recipe in a few words, for tables and legends: `jsd T=2 ce=0.5 hidden=1 on-policy=0.25`."""
    if not recipe:
        return ""
    parts = [str(recipe["loss"])] if "loss" in recipe else []
    for key, label in (("temperature", "T"), ("ce", "ce"), ("intermediate", INTERMEDIATE), ("on_policy", "on-policy")):
        if key in recipe:
            parts.append(f"{label}={recipe[key]:g}")
    return " ".join(parts)


__all__ = ["RecipeSpace", "apply_recipe", "describe_recipe", "divergence_terms"]
