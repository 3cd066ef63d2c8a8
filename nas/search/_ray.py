"""The search's Ray Tune side, imported only where a search runs (importing Ray is slow): the
searcher that records every trial in the Optuna study (`StudySearcher`), the function each Tune
trial runs (`trainable`), and the progress callback."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from distill.tasks import Task, get_task
from distill.tasks.base import GENERATED
from nas._compat import optuna_search_trial
from nas.search.scheduler import FINAL, RUNG
from nas.search.trial import TrialPlan, recorded, run_trial, with_recipe
from nas.spec import Constraints
from nas.study import distinct_evaluated, fail_trial, front_trials, open_storage, set_trial_attrs
from nas.study._record import (
    ARCH,
    ARCH_SHORT,
    DUPLICATE_OF,
    FAIL_REASON,
    INTERRUPTED,
    NOT_TRAINED,
    PRUNED_AT,
    RAY_NODE,
    RECIPE,
)
from nas.texts import save_generated

logger = logging.getLogger(__name__)

UNMEASURED = 1.0  # the constraint value of a bound whose metric a trial has no value for: violated


class StudySearcher(Searcher):
    """Wraps OptunaSearch: writes each trial's architecture, metrics and constraint values
    (or its failure reason) to the Optuna trial before the outcome is told, and tells every
    outcome in its own state: COMPLETE (trained to the end), PRUNED (stopped at a rung, or
    not trained for its size), FAIL. Ray calls suggest() when a slot frees and
    on_trial_complete() when a trial ends, stopped by the scheduler or not."""

    def __init__(
        self,
        inner: Any,
        study: optuna.Study,
        metrics: list[str],
        keep: tuple[str, ...],
        constraints: Constraints,
        texts: Path,
        stopped: dict[str, int] | None = None,
    ) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.study, self.metrics, self.keep = inner, study, metrics, keep
        self.constraints, self.texts = constraints, texts
        self.stopped = stopped if stopped is not None else {}  # the scheduler's: trial id -> the rung it stopped at
        self.numbers: dict[str, int] = {}

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        config = self.inner.suggest(trial_id)
        if isinstance(config, dict):
            self.numbers[trial_id] = config["optuna_trial"]
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Multi-objective Optuna takes no intermediate values."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        try:
            self._tell(trial_id, number, result or {}, error)
        except Exception as exc:  # a trial left RUNNING would hold its twins forever
            logger.exception("recording trial %d failed", number)
            if self.study.trials[number].state == TrialState.RUNNING:
                fail_trial(self.study, number, f"recording its result failed: {exc}")

    def _tell(self, trial_id: str, number: int, result: dict, error: bool) -> None:
        # Trained to the end: the last result is final and the student was trained.
        trained = bool(result.get(FINAL, True)) and NOT_TRAINED not in result
        reason = None
        if error or not result:
            reason = "the trial's worker failed (see the Ray logs of this run)"
        elif FAIL_REASON in result:
            reason = result[FAIL_REASON]
        elif not result.get(FINAL, True) and trial_id not in self.stopped:
            reason = INTERRUPTED  # ended between rungs by anything but the scheduler: not stopped at a rung
        elif trained:
            bad = [m for m in self.metrics if not math.isfinite(float(result.get(m, math.nan)))]
            if bad:
                reason = f"objective {bad[0]} is {result.get(bad[0])}"
        if reason is not None:
            set_trial_attrs(self.study, number, {FAIL_REASON: reason})
            self.inner.on_trial_complete(trial_id, None, error=True)
            return
        attrs = {k: _decoded(result[k]) for k in self.keep if k in result}
        if trial_id in self.stopped:  # stopped by the scheduler at this rung
            attrs[PRUNED_AT] = {"rung": result[RUNG], "step": result["step"]}
        if self.constraints.bounds:  # every bound, every trial: samplers need the same count
            violations = self.constraints.violations(result)
            live = optuna_search_trial(self.inner, trial_id)
            for b in self.constraints.bounds:  # trial.constraints: read by samplers, best_trials, plots
                live.set_constraint(b.metric, violations.get(b.metric, UNMEASURED))
        set_trial_attrs(self.study, number, attrs)
        if trained and isinstance(_decoded(result.get(GENERATED)), dict):  # the text it was scored on
            save_generated(self.texts, f"trial-{number}", _decoded(result[GENERATED]))
        # A result without the objectives makes OptunaSearch tell PRUNED.
        self.inner.on_trial_complete(trial_id, result if trained else None)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its searcher into the run's folder for `Tuner.restore`, which a study
        # never uses (a resumed search reads the Optuna storage). The sampler stays out: it
        # may hold what cannot pickle (optuna 5.1's NSGA-II sampler holds a thread lock).
        return {**self.__dict__, "inner": None}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds every trial."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a new run reads the Optuna storage."""

    def fail_unfinished(self, reason: str) -> None:
        for number in self.numbers.values():
            if self.study.trials[number].state == TrialState.RUNNING:
                fail_trial(self.study, number, reason)
        self.numbers.clear()


def _decoded(value: Any) -> Any:
    """A structured value a trial reported as JSON text (see `trainable`)."""
    if isinstance(value, str) and value.startswith(("[", "{")):
        return json.loads(value)
    return value


def wait_for_twin(plan: TrialPlan, number: int, poll_s: float = 1.0) -> tuple[bool, dict[str, Any]]:
    """Whether trial `number` was trained to the end, and its recorded attributes, once it has
    finished (run in a worker). Raises when the twin failed or was abandoned (a killed run's
    RUNNING trials are marked FAIL), or is still running after `plan.twin_wait_s`."""
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage_url))
    deadline = time.monotonic() + plan.twin_wait_s
    while True:
        twin = study.trials[number]
        if twin.state in (TrialState.COMPLETE, TrialState.PRUNED):
            attrs = {k: twin.user_attrs[k] for k in recorded(plan.task) if k in twin.user_attrs}
            return twin.state == TrialState.COMPLETE, attrs
        if twin.state != TrialState.RUNNING:
            raise RuntimeError(f"repeats trial {number}, which ended as {twin.state.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"repeats trial {number}, still running after {plan.twin_wait_s:.0f} s of waiting")
        time.sleep(poll_s)


def trainable(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Ray Tune function trainable: a report at every rung but the last (the scheduler may
    stop the trial there), then one final report; never raises."""
    node = ray.get_runtime_context().get_node_id()  # which machine of a cluster ran the trial

    def report(result: dict[str, Any]) -> None:
        # Structured values travel as JSON text: Tune flattens nested dicts and its loggers
        # reject lists of dicts.
        result = {**result, RAY_NODE: node}
        tune.report({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in result.items()})

    short = get_task(plan.task).describe(config[ARCH])
    # Tune insists on the objectives in every result; one never measured is NaN, which never
    # reaches Optuna (see StudySearcher).
    unknown = dict.fromkeys(plan.objectives, math.nan)
    try:
        if config.get(NOT_TRAINED):  # too large by its parameter count: nothing to run
            report({**unknown, **config["counts"], NOT_TRAINED: config[NOT_TRAINED], ARCH_SHORT: short})
            return
        twin = config.get(DUPLICATE_OF)
        if twin is not None:  # the same architecture is not trained again
            trained, attrs = wait_for_twin(plan, twin)
            report({**unknown, **attrs, DUPLICATE_OF: twin, FINAL: trained})
            return

        def at_rung(rung: int, metrics: dict[str, Any]) -> None:
            report({**metrics, ARCH_SHORT: short, RUNG: rung, FINAL: False})

        metrics = run_trial(config[ARCH], with_recipe(plan, config.get(RECIPE)), report=at_rung)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the search goes on
        import torch

        name = "out of memory" if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) else type(exc).__name__
        report({**unknown, FAIL_REASON: f"{name}: {exc}".strip()[:500]})
        return
    report({**unknown, **metrics, ARCH_SHORT: short, FINAL: True})


class Progress(Callback):
    """Logs trials done / total, the front's size, elapsed time and an ETA (and hands the
    same figures to `on_progress`)."""

    def __init__(
        self,
        study: optuna.Study,
        task: Task,
        total: int,
        target: int,
        started: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        stopped: dict[str, int] | None = None,
    ) -> None:
        self.study, self.task, self.total, self.target, self.started = study, task, total, target, started
        self.on_progress = on_progress
        self.stopped = stopped if stopped is not None else {}  # the scheduler's: trial id -> the rung it stopped at
        self.done = 0

    def _log(self, trial: Any, what: str) -> None:
        self.done += 1
        elapsed = time.time() - self.started
        complete = len(distinct_evaluated(self.study))
        eta = elapsed / self.done * (self.total - self.done)
        front = len(front_trials(self.study))
        logger.info(
            "trial %d/%d %s | %d/%d architectures done | front %d | elapsed %s | ETA %s",
            self.done,
            self.total,
            what,
            complete,
            self.target,
            front,
            fmt_duration(elapsed),
            fmt_duration(eta),
        )
        if self.on_progress is not None:
            self.on_progress(
                {
                    "event": "trial",
                    "done": self.done,
                    "total": self.total,
                    "evaluated": complete,
                    "target": self.target,
                    "front": front,
                    "elapsed_s": round(elapsed, 1),
                    "eta_s": round(eta, 1),
                    "last": f"trial {trial.config.get('optuna_trial', '?')} {what}",
                }
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if FAIL_REASON in result:
            self._log(trial, f"FAILED ({result[FAIL_REASON][:80]})")
        elif result.get(DUPLICATE_OF) is not None:
            self._log(trial, f"repeats trial {result[DUPLICATE_OF]}, not trained again")
        elif NOT_TRAINED in result:
            self._log(trial, f"{result.get(ARCH_SHORT, '')} not trained: {result[NOT_TRAINED]}")
        elif trial.trial_id in self.stopped:
            self._log(trial, f"{result.get(ARCH_SHORT, '')} stopped at rung {result[RUNG]} (step {result['step']})")
        elif RUNG in result and not result.get(FINAL, True):
            self._log(trial, f"{result.get(ARCH_SHORT, '')} interrupted after step {result['step']}")
        else:
            self._log(trial, f"{result.get(ARCH_SHORT, '')}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial, "FAILED (worker error)")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = trial.config or {}
        twin = config.get(DUPLICATE_OF)
        what = f"repeats trial {twin}" if twin is not None else self.task.describe(config[ARCH])
        logger.info("started trial %s: %s", config.get("optuna_trial", "?"), what)


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"
