"""The studies of a folder as the service shows them: the specs, their stored studies, and each
study's trials, front and hypervolume as plain JSON-ready dicts (numbers, and the same numbers
formatted as the task formats them)."""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from distill.cache import TEACHER_METRICS
from distill.errors import InputError
from distill.tasks import Task, format_metric
from nas._compat import storage_of
from nas.dominance import hypervolume, to_minimize
from nas.full import export_dir
from nas.report import hypervolume_reference
from nas.spec import StudySpec, load_spec
from nas.study import (
    StudyRecord,
    TrialRecord,
    distilled_records,
    distinct_evaluated,
    front_trials,
    is_feasible,
    load_existing_study,
    outcome,
    task_of,
    trial_counts,
)
from nas.study._record import (
    ARCH,
    ARCH_SHORT,
    DISTILLED,
    DUPLICATE_OF,
    EVAL_SETS,
    LOSS_CURVE,
    PRUNED_AT,
    RECIPE,
    RUNGS,
    TRAIN_STEPS,
)


class NotFound(LookupError):
    """No such study, trial, export or job: HTTP 404."""


HIDDEN = (ARCH, LOSS_CURVE, RUNGS, RECIPE, EVAL_SETS, "counts")
"""trial attributes the pages show in their own places, not as metrics"""


def spec_path(studies: Path, name: str) -> Path:
    """The spec `name` (e.g. "demo.toml") in the studies folder; a name that leaves the folder
    (absolute, `..`, a subfolder, a link pointing out) is refused."""
    if not name or "\\" in name or "\x00" in name:
        raise InputError(f"spec: {name!r} is not a spec file name; allowed: a .toml file in {studies}")
    parts = PurePosixPath(name)
    if parts.is_absolute() or len(parts.parts) != 1 or name in (".", ".."):
        raise InputError(f"spec: {name!r} leaves the studies folder; allowed: a .toml file in {studies}")
    if parts.suffix != ".toml":
        raise InputError(f"spec: {name!r} is not a .toml study spec")
    path = studies / parts
    try:
        path.resolve().relative_to(studies.resolve())
    except ValueError:
        raise InputError(f"spec: {name!r} leaves the studies folder; allowed: a .toml file inside {studies}") from None
    if not path.is_file():
        raise InputError(f"spec: no spec {name!r} in {studies}")
    return path


@functools.lru_cache(maxsize=64)
def _teacher_label(teacher: Any, base_dir: Path) -> str:
    from distill.teachers import teacher_source

    try:
        return teacher_source(teacher, base_dir).name
    except InputError:  # a package not installed: named as the spec names it
        return teacher.model or f"{teacher.package} (package)"


def teacher_label(spec: StudySpec) -> str:
    """The spec's teacher as reports and model cards name it (for studies not searched yet)."""
    return _teacher_label(spec.teacher, spec.base_dir)


class Catalog:
    """The specs of a studies folder and their studies; storages are opened once and shared."""

    def __init__(self, studies: Path) -> None:
        self.studies = studies
        self._storages: dict[str, Any] = {}
        self._specs: dict[Path, tuple[float, StudySpec | str]] = {}
        self._lock = threading.Lock()

    def spec_names(self) -> list[str]:
        return sorted(p.relative_to(self.studies).as_posix() for p in self.studies.glob("*.toml"))

    def load(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
        """The validated spec `name` with `overrides` (InputError naming the key otherwise)."""
        path = spec_path(self.studies, name)
        if overrides:
            return load_spec(path, list(overrides))
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._specs.get(path)
        if cached is None or cached[0] != mtime:
            try:
                loaded: StudySpec | str = load_spec(path)
            except InputError as exc:
                loaded = str(exc)
            cached = (mtime, loaded)
            with self._lock:
                self._specs[path] = cached
        if isinstance(cached[1], str):
            raise InputError(cached[1])
        return cached[1]

    def specs(self) -> dict[str, tuple[str, StudySpec | None, str | None]]:
        """study name -> (spec file, spec, the spec's error)"""
        found: dict[str, tuple[str, StudySpec | None, str | None]] = {}
        for file in self.spec_names():
            try:
                spec = self.load(file)
            except InputError as exc:
                found[PurePosixPath(file).stem] = (file, None, str(exc))
                continue
            found.setdefault(spec.name, (file, spec, None))
        return found

    def spec_of(self, study: str) -> tuple[str, StudySpec]:
        entry = self.specs().get(study)
        if entry is None or entry[1] is None:
            raise NotFound(f"no study {study!r} in {self.studies}")
        return entry[0], entry[1]

    def study(self, spec: StudySpec) -> optuna.Study | None:
        """The stored study of `spec`, None when it has not been searched yet."""
        url = spec.storage_url
        with self._lock:
            storage = self._storages.get(url)
        if storage is None:
            try:  # a storage is opened only once its file exists
                storage = storage_of(load_existing_study(spec))
            except InputError:
                return None
            with self._lock:
                self._storages[url] = storage
        try:
            return optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError:
            return None


def metric_table(task: Task, study: optuna.Study) -> list[dict[str, Any]]:
    """The study's objectives first, then the task's other metrics (the edge runtime's where a
    trial has them): name, label, direction."""
    objectives = study.metric_names or []
    declared = {m.name: m for m in task.metrics}
    measured = {k for t in study.get_trials(deepcopy=False) for k in t.user_attrs}
    names = [*objectives, *[n for n, m in declared.items() if n not in objectives and (not m.runtime or n in measured)]]
    return [
        {
            "name": n,
            "label": declared[n].label if n in declared else n,
            "kind": declared[n].kind if n in declared else "",
            "direction": declared[n].direction if n in declared else "",
            "objective": n in objectives,
        }
        for n in names
    ]


def trial_row(task: Task, t: FrozenTrial, front: set[int], distilled: dict[str, Any]) -> dict[str, Any]:
    """One trial: state, architecture, every metric (and formatted), front membership."""
    r = TrialRecord(t)
    a = r.attrs
    metrics = {
        k: v for k, v in a.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in HIDDEN
    }
    metrics.update(a.get("counts") or {})  # a trial not trained for its size still has its size
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v) and k not in (DUPLICATE_OF, PRUNED_AT)}
    full = distilled.get(str(t.number))
    return {
        "number": t.number,
        "state": outcome(t),
        "front": t.number in front,
        ARCH: r.arch,
        ARCH_SHORT: (r.arch_short or task.describe(r.arch)) if r.arch else "",
        RECIPE: r.recipe,
        "metrics": metrics,
        "formatted": {k: format_metric(task, k, v) for k, v in metrics.items()},
        "reason": r.fail_reason or r.not_trained or (r.pruned_at and f"stopped at step {r.pruned_at.get('step')}"),
        DUPLICATE_OF: r.duplicate_of,
        "started": t.datetime_start.timestamp() if t.datetime_start else None,
        "completed": t.datetime_complete.timestamp() if t.datetime_complete else None,
        DISTILLED: bool(full),
    }


def study_json(study: optuna.Study, with_trials: bool = True) -> dict[str, Any]:
    """A study for the pages: teacher, metrics, counts, and (`with_trials`) every trial, the
    front and the hypervolume after each trial."""
    task = task_of(study)
    evaluated = distinct_evaluated(study)
    front = {t.number for t in front_trials(study)}
    record = StudyRecord(study)
    teacher = record.teacher_metrics
    out: dict[str, Any] = {
        "name": study.study_name,
        "task": task.name,
        "teacher": record.teacher,
        TEACHER_METRICS: teacher,
        "teacher_formatted": {k: format_metric(task, k, v) for k, v in teacher.items()},
        "objectives": study.metric_names or [],
        "directions": [d.name.lower() for d in study.directions],
        "metrics": metric_table(task, study),
        "counts": trial_counts(study),
        "evaluated": len(evaluated),
        "front_size": len(front),
        "trials_total": len(study.trials),
    }
    if with_trials:
        distilled = distilled_records(study)
        out["trials"] = [trial_row(task, t, front, distilled) for t in study.get_trials(deepcopy=False)]
        out["hypervolume"] = hypervolume_history(study)
    return out


def hypervolume_history(study: optuna.Study) -> list[dict[str, Any]]:
    """The hypervolume of the feasible front after each completed architecture, in the order
    they completed, against the report's reference point."""
    directions = [d.name.lower() for d in study.directions]
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not TrialRecord(t).is_repeat and is_feasible(t) and t.values and t.datetime_complete
    ]
    if len(directions) < 2 or not done:
        return []
    done.sort(key=lambda t: t.datetime_complete)
    points = to_minimize([t.values for t in done], directions)
    ref = to_minimize(hypervolume_reference(study), directions)[0]
    return [
        {"trial": t.number, "at": t.datetime_complete.timestamp(), "hypervolume": hypervolume(points[: i + 1], ref)}
        for i, t in enumerate(done)
    ]


def model_card(spec: StudySpec, number: int) -> Path:
    """Where trial `number`'s export keeps its model card (once fully distilled)."""
    return export_dir(spec, number) / "README.md"


def trial_json(spec: StudySpec, study: optuna.Study, number: int) -> dict[str, Any]:
    """One trial in full: its row, loss curve, rungs, the teacher's metrics beside its own, and
    its full run when it was distilled (with the export's model card)."""
    if not 0 <= number < len(study.trials):
        raise NotFound(f"no trial {number} in study {study.study_name!r}")
    task = task_of(study)
    t = study.trials[number]
    front = {f.number for f in front_trials(study)}
    distilled = distilled_records(study)
    row = trial_row(task, t, front, distilled)
    r = TrialRecord(t)
    full = distilled.get(str(number))
    card = model_card(spec, number)
    on_sets = StudyRecord(study).teacher_eval_sets
    runs = {"brief": r.eval_sets or {}, "full": (full or {}).get(EVAL_SETS) or {}, "teacher": on_sets}
    scored_on_sets = [m.name for m in task.metrics if m.kind == "quality" and not m.runtime]  # in PyTorch
    sets = {
        name: {run: {m: format_metric(task, m, values.get(name, {}).get(m)) for m in scored_on_sets} for run, values in runs.items()}
        for name in dict.fromkeys([*on_sets, *runs["brief"], *runs["full"]])
    }
    return {
        **row,
        LOSS_CURVE: r.loss_curve,
        TRAIN_STEPS: r.metric(TRAIN_STEPS),
        RUNGS: r.rungs,
        EVAL_SETS: r.eval_sets or {},
        "eval_sets_formatted": sets,
        TEACHER_METRICS: StudyRecord(study).teacher_metrics,
        "full": (
            {
                **full,
                "formatted": {k: format_metric(task, k, v) for k, v in (full.get("metrics") or {}).items()},
                "has_card": card.is_file(),
            }
            if full
            else None
        ),
    }
