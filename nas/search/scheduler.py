"""Multi-objective successive halving for Ray Tune (MO-ASHA: Schmucker et al., 2021).

Ray Tune's ASHA and Optuna's pruners rank trials by one metric; a study of quality against
size has no single order. Here each trial reports at rungs of its budget; at every rung the
trials that reached it are sorted into non-dominated fronts (ties inside a front broken by
crowding distance, as NSGA-II does), and a trial goes on if it is on the first front at that
rung or among the best 1/reduction of them. Decisions are asynchronous, as in ASHA: a trial is
judged against the trials that reached its rung before it, so no slot waits for a rung to fill.

The scheduler reads results that carry `rung` (its index) and `final: False`; a final result,
a failure or a repeat of an earlier architecture passes untouched.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from nas.dominance import nondominated_ranks, pareto_order, to_minimize

logger = logging.getLogger(__name__)

RUNG = "rung"
FINAL = "final"


def survives(points: np.ndarray, index: int, reduction: float) -> bool:
    """Whether point `index` of `points` (values to minimize, one row per trial at a rung) goes
    on: it is non-dominated there, or among the best ceil(n / reduction) in Pareto order."""
    if nondominated_ranks(points)[index] == 0:
        return True
    keep = max(1, math.ceil(len(points) / reduction))
    return index in pareto_order(points)[:keep]


class RungBoard:
    """The rungs' records and the decision, apart from Ray (the sampler benchmark replays a
    search with it): `metrics` with their `modes` ("min" | "max"), in any number."""

    def __init__(self, metrics: list[str], modes: list[str], reduction: float = 2.0) -> None:
        if len(metrics) != len(modes) or not metrics:
            raise ValueError("one mode per metric, at least one metric")
        self.metrics, self.modes, self.reduction = list(metrics), list(modes), reduction
        self.rungs: dict[int, dict[str, np.ndarray]] = {}  # rung -> trial key -> values to minimize

    def record(self, key: str, rung: int, result: dict[str, Any]) -> None:
        """Count a trial at `rung` (also one of an earlier run: a resumed study is judged
        against the stored trials)."""
        self.rungs.setdefault(rung, {})[key] = to_minimize([[result[m] for m in self.metrics]], self.modes)[0]

    def goes_on(self, key: str, rung: int, result: dict[str, Any]) -> bool:
        """Record trial `key` at `rung` and say whether it goes on to the next rung."""
        self.record(key, rung, result)
        seen = self.rungs[rung]
        ids = list(seen)
        return survives(np.stack([seen[i] for i in ids]), ids.index(key), self.reduction)


def pareto_asha(metrics: list[str], modes: list[str], reduction: float = 2.0) -> Any:
    """The Ray Tune scheduler over a fresh `RungBoard` (its `board`); defined lazily: importing
    Ray is slow and only the search needs it."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoASHA(FIFOScheduler):
        """Stops trials dominated at a rung; every other result passes untouched."""

        def __init__(self) -> None:
            super().__init__()
            self.board = RungBoard(metrics, modes, reduction)
            self.stopped: dict[str, int] = {}  # trial id -> the rung it stopped at

        def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
            return True  # the objectives are given at construction

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if result.get(FINAL, True) or RUNG not in result:
                return TrialScheduler.CONTINUE
            values = [result.get(m) for m in metrics]
            if any(v is None or not math.isfinite(float(v)) for v in values):
                return TrialScheduler.CONTINUE  # nothing to compare; the trial reports its failure itself
            rung = int(result[RUNG])
            if self.board.goes_on(trial.trial_id, rung, result):
                return TrialScheduler.CONTINUE
            self.stopped[trial.trial_id] = rung
            logger.debug("trial %s stopped at rung %d", trial.trial_id, rung)
            return TrialScheduler.STOP

        def debug_string(self) -> str:
            return f"ParetoASHA: {len(self.stopped)} trials stopped at a rung"

    return ParetoASHA()


__all__ = ["FINAL", "RUNG", "RungBoard", "pareto_asha", "survives"]
