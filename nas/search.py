"""The search: Ray Tune runs the trials, Optuna (through OptunaSearch) samples architectures
and stores every trial in a persistent storage, the source of truth of a study."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from distill import LossConfig, PreparedData, prepare
from distill.errors import InputError
from distill.tasks import Task, get_task, task_for_metrics
from distill.tasks.base import OUTPUTS
from nas.locks import shared_storage, study_writer
from nas.recipe import INTERMEDIATE
from nas.sampling import DEFAULT_SAMPLER, make_sampler
from nas.scheduler import FINAL, RUNG, pareto_asha
from nas.spec import JOURNAL, Constraints, StudySpec
from nas.texts import TEXTS, save_outputs, save_references
from nas.trial import TrialPlan, pick_device, plan_stops, recorded, run_trial, with_recipe

logger = logging.getLogger(__name__)

MAX_ROUNDS = 3
INTERRUPTED = "interrupted: the search stopped before this trial finished"
DISTILLED = "distilled"  # study user attributes `distilled:<trial>`: the record of its full distillation
UNMEASURED = 1.0  # the constraint value of a bound whose metric a trial has no value for: violated
EVAL_SETS = "eval_sets"  # trial and study attribute: {eval set: metrics} (of the student; of the teacher)
EVAL_SETS_INFO = "eval_sets_info"  # study attribute: {eval set: what reading its data found}


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of a URL: a database SQLAlchemy knows, or a journal file (`journal:///`)."""
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    return optuna.storages.get_storage(url)


def open_study(spec: StudySpec) -> optuna.Study:
    """Create or load the study; refuse a stored study whose objectives, task, constraints or
    sampler differ from the spec's. Writes nothing else (`stamp_study` does, once the run
    holds the study)."""
    url = spec.storage_url
    if url.startswith("sqlite:///"):
        spec.out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in spec.objectives.metrics]
    directions = ["minimize" if d == "min" else "maximize" for _, d in spec.objectives.metrics]
    study = optuna.create_study(
        storage=open_storage(url), study_name=spec.name, directions=directions, load_if_exists=True
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions or (study.metric_names and study.metric_names != names):
        raise InputError(
            f"objectives: the stored study {spec.name!r} optimizes {study.metric_names or stored}; "
            f"the spec asks for {names}; give the study a new name (study.name)"
        )
    stored_task = study.user_attrs.get("task")
    if stored_task not in (None, spec.study.task):
        raise InputError(f"study.task: the stored study {spec.name!r} is a {stored_task} study; give it a new name")
    bounds = {b.metric: b.limit for b in spec.constraints.bounds}
    if study.user_attrs.get("constraints", {}) != bounds and study.trials:
        raise InputError(
            f"constraints: the stored study {spec.name!r} was searched with {study.user_attrs.get('constraints') or 'none'}; "
            f"the spec asks for {bounds or 'none'}; its trials were judged by the old ones, give the study a new name"
        )
    stored_sampler = study.user_attrs.get("sampler")
    if stored_sampler and spec.study.sampler not in ("", stored_sampler):
        raise InputError(
            f"study.sampler: the stored study {spec.name!r} samples with {stored_sampler}; "
            f"a resumed study keeps its sampler (give the study a new name to use {spec.study.sampler})"
        )
    return study


def stamp_study(study: optuna.Study, spec: StudySpec) -> None:
    """Record what `open_study` checked: the objectives' names, the task, the constraints and
    the sampler (a resumed study keeps its own)."""
    if not study.metric_names:
        study.set_metric_names([n for n, _ in spec.objectives.metrics])
    study.set_user_attr("task", spec.study.task)
    study.set_user_attr("constraints", {b.metric: b.limit for b in spec.constraints.bounds})
    study.set_user_attr("sampler", study.user_attrs.get("sampler") or spec.study.sampler or DEFAULT_SAMPLER)


def distilled_records(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """{trial number (text): the record of its full distillation}. Each trial's record is its
    own study attribute, so runs on different trials never overwrite each other's (studies
    made before keep theirs in one `distilled` dict)."""
    attrs = study.user_attrs
    records = dict(attrs.get(DISTILLED, {}))
    records.update({k.partition(":")[2]: v for k, v in attrs.items() if k.startswith(f"{DISTILLED}:") and v})
    return records


def record_distilled(study: optuna.Study, number: int, record: dict[str, Any]) -> None:
    study.set_user_attr(f"{DISTILLED}:{number}", record)


def task_of(study: optuna.Study) -> Task:
    """The task of a stored study (studies made before it was recorded: from their metrics)."""
    if "task" in study.user_attrs:
        return get_task(study.user_attrs["task"])
    return task_for_metrics(study.metric_names or [])


def load_existing_study(spec: StudySpec) -> optuna.Study:
    """The stored study of a spec, without creating one."""
    url = spec.storage_url
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix) and not Path(url.removeprefix(prefix)).exists():
            raise InputError(f"study.name: no study {spec.name!r} yet ({url} does not exist); run `nas search` first")
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    except KeyError:
        raise InputError(f"study.name: no study {spec.name!r} in {spec.storage_url}; run `nas search` first") from None
    if task_of(study).name != spec.study.task:
        raise InputError(f"study.task: the stored study {spec.name!r} is a {task_of(study).name} study, the spec says {spec.study.task}")
    return study


def _trial_id(study: optuna.Study, number: int) -> tuple[Any, int]:
    # Optuna's public API writes only to the trial being run; a trial told by another
    # process (a Ray trial, a killed run) is reached through the study's storage.
    storage = study._storage
    return storage, storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def set_trial_attrs(study: optuna.Study, number: int, attrs: dict[str, Any]) -> None:
    storage, trial_id = _trial_id(study, number)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def fail_trial(study: optuna.Study, number: int, reason: str) -> None:
    """Record a trial as FAIL with its reason (a trial is never left RUNNING)."""
    set_trial_attrs(study, number, {"fail_reason": reason})
    storage, trial_id = _trial_id(study, number)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def mark_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed run become FAIL; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        fail_trial(study, t.number, INTERRUPTED)
    return len(stale)


def distinct_complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials that are not repeats of an earlier architecture (feasible or not)."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs
    ]


def distinct_evaluated(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Architectures a search has evaluated: trained to the end, or stopped at a rung."""
    return distinct_complete(study) + [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if "duplicate_of" not in t.user_attrs and "pruned_at" in t.user_attrs
    ]


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def outcome(trial: optuna.trial.FrozenTrial) -> str:
    """How a trial ended: "repeat" (of an earlier architecture), "complete", "infeasible"
    (complete, beyond a constraint), "stopped at a rung", "not trained" (its size), "failed",
    or the state of a trial not ended ("running", "waiting")."""
    a = trial.user_attrs
    if "duplicate_of" in a:
        return "repeat"
    if trial.state == TrialState.COMPLETE:
        return "complete" if is_feasible(trial) else "infeasible"
    if trial.state == TrialState.PRUNED:
        return "stopped at a rung" if "pruned_at" in a else "not trained" if "not_trained" in a else "pruned"
    return "failed" if trial.state == TrialState.FAIL else trial.state.name.lower()


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """How the study's architectures ended: trained (feasible or not), stopped at a rung, left
    untrained for their size, failed; repeats of an earlier architecture apart."""
    ended = collections.Counter(outcome(t) for t in study.get_trials(deepcopy=False))
    return {
        "trained": ended["complete"] + ended["infeasible"],
        "infeasible": ended["infeasible"],
        "stopped at a rung": ended["stopped at a rung"],
        "not trained (size bounds)": ended["not trained"],
        "failed": ended["failed"],
        "repeats": ended["repeat"],
    }


def find_duplicate(
    study: optuna.Study, arch: dict[str, Any], number: int, recipe: dict[str, Any] | None = None
) -> optuna.trial.FrozenTrial | None:
    """An earlier trial of the same architecture (and recipe): finished, stopped at a rung,
    left untrained for its size, or still running."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.number == number or "duplicate_of" in t.user_attrs:
            continue
        if t.user_attrs.get("arch") == arch and (t.user_attrs.get("recipe") or None) == (recipe or None):
            return t
    return None


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


def _decoded(value: Any) -> Any:
    """A structured value a trial reported as JSON text (see `_trainable`)."""
    if isinstance(value, str) and value.startswith(("[", "{")):
        return json.loads(value)
    return value


def _searcher_class() -> type:
    """Defined lazily: importing Ray is slow and only the search needs it."""
    from ray.tune.search import Searcher

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
        ) -> None:
            super().__init__(metric=inner.metric, mode=inner.mode)
            self.inner, self.study, self.metrics, self.keep = inner, study, metrics, keep
            self.constraints, self.texts = constraints, texts
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
            trained = bool(result.get(FINAL, True)) and "not_trained" not in result
            reason = None
            if error or not result:
                reason = "the trial's worker failed (see the Ray logs of this run)"
            elif "fail_reason" in result:
                reason = result["fail_reason"]
            elif trained:
                bad = [m for m in self.metrics if not math.isfinite(float(result.get(m, math.nan)))]
                if bad:
                    reason = f"objective {bad[0]} is {result.get(bad[0])}"
            if reason is not None:
                set_trial_attrs(self.study, number, {"fail_reason": reason})
                self.inner.on_trial_complete(trial_id, None, error=True)
                return
            attrs = {k: _decoded(result[k]) for k in self.keep if k in result}
            if RUNG in result:  # stopped by the scheduler at this rung
                attrs["pruned_at"] = {"rung": result[RUNG], "step": result["step"]}
            if self.constraints.bounds:  # every bound, every trial: samplers need the same count
                violations = self.constraints.violations(result)
                live = self.inner._ot_trials[trial_id]  # the Optuna trial OptunaSearch asked for
                for b in self.constraints.bounds:  # trial.constraints: read by samplers, best_trials, plots
                    live.set_constraint(b.metric, violations.get(b.metric, UNMEASURED))
            set_trial_attrs(self.study, number, attrs)
            if trained and isinstance(_decoded(result.get(OUTPUTS)), dict):  # the text it was scored on
                save_outputs(self.texts, f"trial-{number}", _decoded(result[OUTPUTS]))
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

    return StudySearcher


def _trainable(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Ray Tune function trainable: a report at every rung but the last (the scheduler may
    stop the trial there), then one final report; never raises."""
    import ray
    from ray import tune

    node = ray.get_runtime_context().get_node_id()  # which machine of a cluster ran the trial

    def report(result: dict[str, Any]) -> None:
        # Structured values travel as JSON text: Tune flattens nested dicts and its loggers
        # reject lists of dicts.
        result = {**result, "ray_node": node}
        tune.report({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in result.items()})

    short = get_task(plan.task).describe(config["arch"])
    # Tune insists on the objectives in every result; one never measured is NaN, which never
    # reaches Optuna (see StudySearcher).
    unknown = dict.fromkeys(plan.objectives, math.nan)
    try:
        if config.get("not_trained"):  # too large by its parameter count: nothing to run
            report({**unknown, **config["counts"], "not_trained": config["not_trained"], "arch_short": short})
            return
        twin = config.get("duplicate_of")
        if twin is not None:  # the same architecture is not trained again
            trained, attrs = wait_for_twin(plan, twin)
            report({**unknown, **attrs, "duplicate_of": twin, FINAL: trained})
            return

        def at_rung(rung: int, metrics: dict[str, Any]) -> None:
            report({**metrics, "arch_short": short, RUNG: rung, FINAL: False})

        metrics = run_trial(config["arch"], with_recipe(plan, config.get("recipe")), report=at_rung)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the search goes on
        import torch

        name = "out of memory" if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) else type(exc).__name__
        report({**unknown, "fail_reason": f"{name}: {exc}".strip()[:500]})
        return
    report({**unknown, **metrics, "arch_short": short, FINAL: True})


def _progress_callback(
    study: optuna.Study,
    task: Task,
    total: int,
    target: int,
    started: float,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """Logs trials done / total, the front's size, elapsed time and an ETA (and hands the
        same figures to `on_progress`)."""

        def __init__(self) -> None:
            self.done = 0

        def _log(self, trial: Any, what: str) -> None:
            self.done += 1
            elapsed = time.time() - started
            complete = len(distinct_evaluated(study))
            eta = elapsed / self.done * (total - self.done)
            front = len(front_trials(study))
            logger.info(
                "trial %d/%d %s | %d/%d architectures done | front %d | elapsed %s | ETA %s",
                self.done,
                total,
                what,
                complete,
                target,
                front,
                _fmt(elapsed),
                _fmt(eta),
            )
            if on_progress is not None:
                on_progress(
                    {
                        "event": "trial",
                        "done": self.done,
                        "total": total,
                        "evaluated": complete,
                        "target": target,
                        "front": front,
                        "elapsed_s": round(elapsed, 1),
                        "eta_s": round(eta, 1),
                        "last": f"trial {trial.config.get('optuna_trial', '?')} {what}",
                    }
                )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            if "fail_reason" in result:
                self._log(trial, f"FAILED ({result['fail_reason'][:80]})")
            elif result.get("duplicate_of") is not None:
                self._log(trial, f"repeats trial {result['duplicate_of']}, not trained again")
            elif "not_trained" in result:
                self._log(trial, f"{result.get('arch_short', '')} not trained: {result['not_trained']}")
            elif RUNG in result and not result.get(FINAL, True):
                self._log(trial, f"{result.get('arch_short', '')} stopped at rung {result[RUNG]} (step {result['step']})")
            else:
                self._log(trial, f"{result.get('arch_short', '')}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._log(trial, "FAILED (worker error)")

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            config = trial.config or {}
            twin = config.get("duplicate_of")
            what = f"repeats trial {twin}" if twin is not None else task.describe(config["arch"])
            logger.info("started trial %s: %s", config.get("optuna_trial", "?"), what)

    return Progress()


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front: Optuna's non-dominated COMPLETE trials among those that meet every
    constraint, without repeated architectures (trials stopped at a rung are PRUNED: never here)."""
    if not distinct_complete(study):
        return []
    return [t for t in study.best_trials if "duplicate_of" not in t.user_attrs]


def prepare_study(spec: StudySpec, temperature: float | None = None) -> PreparedData:
    """Tokenize the data and cache the teacher's outputs, once per study (on a GPU where the
    spec asks for one and there is one); the search space is checked against the teacher
    before any teacher output is computed. With a searchable recipe, the outputs every recipe
    may need, at `temperature` (one of the recipe's; default: the loss's)."""
    return _prepare(spec, spec.data, temperature=temperature, check=lambda config: spec.task.check_space(spec.space, config))


def cache_loss(spec: StudySpec, temperature: float | None = None) -> LossConfig:
    """The loss the teacher's outputs are cached for: the spec's, plus every term its recipe
    may choose, at `temperature`."""
    weights, params = dict(spec.loss.weights), dict(spec.loss.params)
    weights |= dict.fromkeys(spec.recipe.loss, 1.0)
    if any(spec.recipe.intermediate):
        weights[INTERMEDIATE] = 1.0
    if temperature is not None:
        params["temperature"] = temperature
    return dataclasses.replace(spec.loss, weights=weights, params=params)


def _prepare(spec: StudySpec, data: Any, teacher: Any = None, temperature: float | None = None, **kwargs: Any) -> PreparedData:
    return prepare(
        spec.task,
        teacher or spec.teacher,
        data,
        cache_loss(spec, temperature),
        base_dir=spec.base_dir,
        cache_root=spec.out_dir / "cache",
        seed=spec.study.seed,
        device=str(pick_device(spec.resources.gpus)),
        **kwargs,
    )


def prepare_other_teachers(
    spec: StudySpec, data: PreparedData, temperature: float | None = None
) -> tuple[PreparedData, ...]:
    """The spec's other teachers (`[[teacher]]` after the first) on the study's data, cached
    like the first: each must cut the data into the same items with the same tokens (the
    student's tokenizer is the first teacher's) and give outputs of the same shapes."""
    out = []
    for i, teacher in enumerate(spec.other_teachers, start=1):
        key = f"teacher[{i}]"
        try:
            other = _prepare(spec, spec.data, teacher, temperature)  # students are built from the first
        except InputError as e:
            text = str(e)
            raise InputError(f"{key}.{text[8:]}" if text.startswith("teacher.") else f"{key} ({teacher.model or teacher.package}): {text}") from None
        check_same_items(data, other, key)
        out.append(other)
    return tuple(out)


def check_same_items(first: PreparedData, other: PreparedData, key: str) -> None:
    """Raise `InputError` naming `key` unless `other` holds the first teacher's training items
    token for token and outputs of the same shapes."""
    outputs = set(first.meta["outputs"].get("train", {})) | set(other.meta["outputs"].get("train", {}))
    items = sorted(p.name for p in first.path.glob("train_*.npy") if p.name[6:-4] not in outputs)
    for name in items:
        if not (other.path / name).exists() or not np.array_equal(first.array(name[:-4]), other.array(name[:-4])):
            raise InputError(
                f"{key}.model: {other.meta['teacher_name']!r} tokenizes the data unlike the first teacher "
                f"({first.meta['teacher_name']!r}); several teachers must share the student's tokenizer"
            )
    for split, arrays in first.meta["outputs"].items():
        theirs = other.meta["outputs"].get(split, {})
        for name, spec in arrays.items():
            if name in theirs and theirs[name]["shape"] != spec["shape"]:
                raise InputError(
                    f"{key}.model: its {name} has shape {theirs[name]['shape']}, the first teacher's {spec['shape']}; "
                    "several teachers must give outputs of one shape"
                )


def prepare_eval_sets(spec: StudySpec) -> dict[str, PreparedData]:
    """Each `[[eval]]` set tokenized with the teacher's outputs on it, cached like the study's
    data (after `prepare_study`: the teacher exists by then). A data error names the set's table."""
    out = {}
    for i, s in enumerate(spec.evals):
        try:
            out[s.name] = _prepare(spec, s.data, held_out_only=True)
        except InputError as e:
            text = str(e)
            raise InputError(f"eval[{i}].{text[5:]}" if text.startswith("data.") else f"eval[{i}] ({s.name}): {text}") from None
    return out


def eval_set_teacher_metrics(evals: dict[str, PreparedData]) -> dict[str, dict[str, float]]:
    return {name: data.meta["teacher_metrics"] for name, data in evals.items()}


def eval_set_info(evals: dict[str, PreparedData]) -> dict[str, dict[str, Any]]:
    """What reading each extra evaluation set's data found."""
    return {name: data.meta.get("data_info", {}) for name, data in evals.items()}


def trial_plan(
    spec: StudySpec,
    data: PreparedData,
    evals: dict[str, PreparedData] | None = None,
    others: tuple[PreparedData, ...] = (),
    by_temperature: dict[float, tuple[PreparedData, tuple[PreparedData, ...]]] | None = None,
) -> TrialPlan:
    """What every trial of the study's search runs with."""
    mf = spec.multi_fidelity
    return TrialPlan(
        spec.study.task,
        data,
        spec.distill,
        spec.loss,
        spec.storage_url,
        spec.name,
        tuple(n for n, _ in spec.objectives.metrics),
        spec.study.seed,
        spec.resources.cpus,
        spec.resources.gpus,
        rungs=mf.rungs if mf.enabled else (1.0,),
        size_bounds=spec.constraints.on({m.name: m.kind for m in spec.task.metrics}, "size"),
        evals=evals or {},
        others=others,
        by_temperature=by_temperature or {},
    )


def run_search(
    spec: StudySpec,
    *,
    trials: int | None = None,
    address: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has evaluated `trials` distinct architectures
    (trained to the end, or stopped at a rung by multi-fidelity). One search per study at a
    time: another run holding it is named in the `InputError` raised before anything is
    touched. `on_progress` receives each finished trial's progress figures."""
    target = trials or spec.study.trials
    if address is None:  # a cluster's nodes are known once Ray has joined it
        check_resources(spec, None)
    elif not shared_storage(spec.storage_url):
        raise InputError(
            f"--storage: a search on a Ray cluster (--address) needs a storage that every node can write: "
            f"a database URL (postgresql://user@host/db) or a journal file on a shared filesystem ({JOURNAL}/shared/study.log); "
            f"{spec.storage_url.partition(':')[0]} is for one machine"
        )
    doing = f"study {spec.name!r} is being searched"
    with study_writer(spec, "search", doing, lambda: open_study(spec)) as study:
        return _search(spec, study, target, address, on_progress)


def check_resources(spec: StudySpec, nodes: list[dict[str, float]] | None) -> None:
    """Refuse, before the search starts, a trial's CPUs or GPUs that no node has (`nodes`:
    each node's resources; None: this machine's): Ray would wait forever to place it."""
    if nodes is None:
        import torch

        nodes = [{"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}]
        where = "this machine has"
    else:
        where = f"the largest of the cluster's {len(nodes)} node(s) has"
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    asked = spec.resources
    if asked.cpus > cpus:
        raise InputError(f"resources.cpus: each trial asks for {asked.cpus:g} CPUs; {where} {cpus:g}")
    if asked.gpus > gpus:
        raise InputError(
            f"resources.gpus: each trial asks for {asked.gpus:g} GPU(s); {where} {gpus:g}; "
            "set resources.gpus = 0 to train on CPUs"
        )


def start_ray(address: str | None, **options: Any) -> None:
    """Join the cluster at `address`, or start a Ray of this machine's own that listens on
    127.0.0.1 only (never joining a cluster that RAY_ADDRESS or a running instance names)."""
    if address is None:
        # Ray binds its servers to the node's address, which it resolves to the machine's
        # routable one unless it runs as a single-machine cluster: then 127.0.0.1.
        os.environ[LOOPBACK_ONLY] = "0"  # read by the processes Ray starts
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at start, whenever Ray was imported
    import ray

    logger.info("starting Ray%s", f" (joining {address})" if address else " on 127.0.0.1")
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        **({"_node_ip_address": "127.0.0.1"} if address is None else {}),
        **options,
    )


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for clusters of several machines; off, a local Ray binds to 127.0.0.1"""


def _search(
    spec: StudySpec,
    study: optuna.Study,
    target: int,
    address: str | None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> optuna.Study:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing
    # Ctrl-C (or a stop from the service) ends the search: Tune's own handler would end only
    # the current round, and the next round would start sampling again.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    stamp_study(study, spec)  # only the holder of the study's search gets here
    stale = mark_interrupted(study)
    if stale:
        logger.info("marked %d trial(s) left RUNNING by an earlier run as FAIL", stale)
    done = len(distinct_evaluated(study))
    if done >= target:
        logger.info("study %s already holds %d/%d architectures", spec.name, done, target)
        return study
    if address is not None:  # the cluster's nodes, checked before the teacher runs
        if not ray.is_initialized():
            start_ray(address)
        check_resources(spec, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    data = prepare_study(spec)
    others = prepare_other_teachers(spec, data)
    study.set_user_attr("teacher", " + ".join(d.meta["teacher_name"] for d in (data, *others)))
    study.set_user_attr("teacher_metrics", data.meta["teacher_metrics"])
    if others:  # quality metrics are measured against the first teacher; the others' own, for reference
        study.set_user_attr("other_teacher_metrics", [d.meta["teacher_metrics"] for d in others])
    for key in ("data_info", "scoring"):  # what reading the data found; how quality is computed
        study.set_user_attr(key, data.meta.get(key, {}))
    by_temperature = {}
    for t in spec.recipe.temperature:  # the teachers' outputs at each temperature the recipe may choose
        at_t = prepare_study(spec, t)
        by_temperature[t] = (at_t, prepare_other_teachers(spec, at_t, t))
    evals = prepare_eval_sets(spec)
    study.set_user_attr(EVAL_SETS, eval_set_teacher_metrics(evals))
    study.set_user_attr(EVAL_SETS_INFO, eval_set_info(evals))
    save_references(spec.out_dir / TEXTS, {"eval": data, **evals})  # what generated text is scored against
    metrics = [n for n, _ in spec.objectives.metrics]
    modes = [d for _, d in spec.objectives.metrics]
    task = spec.task
    mf = spec.multi_fidelity
    plan = trial_plan(spec, data, evals, others, by_temperature)
    size_bounds = plan.size_bounds
    if not ray.is_initialized():  # after the data and teachers: bad input is one line, before Ray prints
        start_ray(address)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, plan=plan), {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    )

    def define(trial: Any) -> dict[str, Any]:
        arch = spec.space.sample(trial)
        trial.set_user_attr("arch", arch)
        recipe = spec.recipe.sample(trial) if spec.recipe else None
        if recipe:
            trial.set_user_attr("recipe", recipe)
        config = {"arch": arch, "recipe": recipe, "optuna_trial": trial.number, "duplicate_of": None}
        twin = find_duplicate(study, arch, trial.number, recipe)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            return config | {"duplicate_of": twin.number}
        counts = task.param_counts(arch, data)  # a bound on parameters costs nothing to check
        missed = size_bounds.missed(counts)
        if missed is not None:
            return config | {"not_trained": f"infeasible before it started: {missed}", "counts": counts}
        return config

    scheduler = None
    if mf.enabled and len(mf.rungs) > 1:
        scheduler = pareto_asha(metrics, modes, mf.reduction)
        # A resumed search judges new trials against the stored ones that reported at the same steps.
        stops = plan_stops(plan)[:-1]
        for t in distinct_evaluated(study):
            for entry in t.user_attrs.get("rungs", []):
                if entry.get("step") not in stops:
                    continue
                values = {**t.user_attrs, **entry}
                if all(math.isfinite(float(values.get(m, math.nan))) for m in metrics):
                    scheduler.board.record(f"stored-{t.number}", stops.index(entry["step"]), values)
    started = time.time()
    for _ in range(MAX_ROUNDS):
        before = len(distinct_evaluated(study))
        remaining = target - before
        if remaining <= 0:
            break
        sampler = make_sampler(study.user_attrs["sampler"], seed=spec.study.seed + len(study.trials), trials=target)
        inner = OptunaSearch(
            space=define, metric=metrics, mode=modes, sampler=sampler, study_name=spec.name, storage=study._storage
        )
        searcher = _searcher_class()(
            inner, study, metrics, recorded(spec.study.task), spec.constraints, spec.out_dir / TEXTS
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=spec.study.concurrency,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str((spec.out_dir / "ray").resolve()),
                verbose=0,
                callbacks=[_progress_callback(study, task, remaining, target, started, on_progress)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        try:
            tuner.fit()
        finally:
            searcher.fail_unfinished(INTERRUPTED)
        if len(distinct_evaluated(study)) == before:
            logger.warning("no trial of this round was evaluated; stopping (see the trials' fail_reason and not_trained)")
            break
        if len(distinct_evaluated(study)) < target:
            logger.info("repeated, untrained or failed architectures left the study short; sampling more")
    logger.info(
        "search done: %d/%d architectures, front of %d, %s",
        len(distinct_evaluated(study)),
        target,
        len(front_trials(study)),
        _fmt(time.time() - started),
    )
    return study
