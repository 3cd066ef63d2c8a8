"""What a study stores, defined once: the key of every trial and study attribute, what each
means, and the rules that read them (how a trial ended, which trials count, the front).
Callers ask a `TrialRecord` or a `StudyRecord`; no other module spells a stored key."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from distill.cache import DATA_INFO, PRECISION, SCORING, TEACHER_METRICS, PreparedData
from distill.tasks import Task, get_task, task_for_metrics

# -- trial attributes (Optuna user attributes of a trial), besides its task's metrics
ARCH = "arch"  # the sampled architecture (a dict the search space builds from)
ARCH_SHORT = "arch_short"  # the architecture in one line (`Task.describe`)
RECIPE = "recipe"  # how it was taught, where the spec searches the recipe (`[space.recipe]`)
DUPLICATE_OF = "duplicate_of"  # the number of the earlier trial of the same architecture and recipe
FAIL_REASON = "fail_reason"  # why a FAIL trial failed
PRUNED_AT = "pruned_at"  # {rung, step} where multi-fidelity stopped it (state PRUNED)
NOT_TRAINED = "not_trained"  # why it was not trained: its size broke a bound (state PRUNED)
RUNGS = "rungs"  # [{step, quality metrics}] at each rung it reached, the last its result
EVAL_SETS = "eval_sets"  # {extra evaluation set: quality metrics} (`[[eval]]`); the study's: the teacher's
LOSS_CURVE = "loss_curve"  # training losses, about 50 points
TRAIN_STEPS = "train_steps"  # the optimizer steps it trained for
RAY_NODE = "ray_node"  # the Ray node that ran it
PHASE_SECONDS = "phase_seconds"  # {build, size, runtime, loss, train, rungs, evaluate}: where its time went
PEAK_RSS = "peak_rss_mb"  # the highest resident memory of the worker process that ran it, so far
# PRECISION: what it trained and was measured in ("bf16" or "fp32"; `distill.precision`)
TRIAL_ATTRS = (
    ARCH, ARCH_SHORT, DUPLICATE_OF, "train_loss", "train_seconds", TRAIN_STEPS, LOSS_CURVE, "device",
    PRECISION, RUNGS, PRUNED_AT, NOT_TRAINED, EVAL_SETS, RAY_NODE, PHASE_SECONDS, PEAK_RSS,
)  # fmt: skip
"""every attribute a trial stores from what its worker reported, besides its task's metrics"""

# -- study attributes (Optuna user attributes of the study)
TASK = "task"  # the task's registry name
TEACHER = "teacher"  # the teachers' names, " + " between them
OTHER_TEACHER_METRICS = "other_teacher_metrics"  # the other teachers' own, for reference
EVAL_SETS_INFO = "eval_sets_info"  # {extra evaluation set: what reading its data found}
# TEACHER_METRICS (the first teacher measured as a student), DATA_INFO (what reading the data
# found) and SCORING (how quality is computed): the keys of the first teacher's cache, kept as they are
CONSTRAINTS = "constraints"  # {metric: limit} the trials were judged by
SAMPLER = "sampler"  # the sampler's name; a resumed study keeps it
DISTILLED = "distilled"  # `distilled:<trial>`: the record of that trial's full distillation
RUNTIME_FILES = "runtime_files"  # in a full run's record: {precision: the export's edge-runtime files}
TEACHER_RUNTIME = "teacher_runtime"  # in a full run's record: the teacher's runtime metrics at those precisions
RANK_CHECK = "rank_check"  # the last `nas rank-check` measurement (studies made before: "fidelity")

INTERRUPTED = "interrupted: the search stopped before this trial finished"
"""the fail reason of a trial a killed or stopped run left RUNNING"""


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One stored trial, read through what callers ask of it."""

    trial: FrozenTrial

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def state(self) -> TrialState:
        return self.trial.state

    @property
    def attrs(self) -> dict[str, Any]:
        return self.trial.user_attrs

    @property
    def arch(self) -> dict[str, Any] | None:
        return self.attrs.get(ARCH)

    @property
    def arch_short(self) -> str:
        return self.attrs.get(ARCH_SHORT, "")

    @property
    def recipe(self) -> dict[str, Any] | None:
        return self.attrs.get(RECIPE) or None

    @property
    def duplicate_of(self) -> int | None:
        return self.attrs.get(DUPLICATE_OF)

    @property
    def is_repeat(self) -> bool:
        """Whether it repeats an earlier trial's architecture and recipe (never trained itself)."""
        return DUPLICATE_OF in self.attrs

    @property
    def fail_reason(self) -> str | None:
        return self.attrs.get(FAIL_REASON)

    @property
    def pruned_at(self) -> dict[str, int] | None:
        return self.attrs.get(PRUNED_AT)

    @property
    def not_trained(self) -> str | None:
        return self.attrs.get(NOT_TRAINED)

    @property
    def rungs(self) -> list[dict[str, Any]]:
        return self.attrs.get(RUNGS) or []

    @property
    def eval_sets(self) -> dict[str, dict[str, float]]:
        return self.attrs.get(EVAL_SETS, {})

    @property
    def loss_curve(self) -> list[float]:
        return self.attrs.get(LOSS_CURVE) or []

    def metric(self, name: str) -> Any:
        """The value of metric `name` (None when it has none)."""
        return self.attrs.get(name)

    def metrics(self, task: Task) -> dict[str, Any]:
        """Every metric of `task` it has."""
        return {m.name: self.attrs[m.name] for m in task.metrics if m.name in self.attrs}

    @property
    def feasible(self) -> bool:
        """Whether it meets every constraint (trials of a study without any do)."""
        return all(v <= 0 for v in self.trial.constraints.values())

    @property
    def evaluated(self) -> bool:
        """An architecture the search evaluated: trained to the end, or stopped at a rung."""
        return not self.is_repeat and (
            self.state == TrialState.COMPLETE or (self.state == TrialState.PRUNED and PRUNED_AT in self.attrs)
        )

    @property
    def outcome(self) -> str:
        """How it ended: "repeat" (of an earlier architecture), "complete", "infeasible"
        (complete, beyond a constraint), "stopped at a rung", "not trained" (its size),
        "failed", or the state of a trial not ended ("running", "waiting")."""
        if self.is_repeat:
            return "repeat"
        if self.state == TrialState.COMPLETE:
            return "complete" if self.feasible else "infeasible"
        if self.state == TrialState.PRUNED:
            return "stopped at a rung" if PRUNED_AT in self.attrs else "not trained" if NOT_TRAINED in self.attrs else "pruned"
        return "failed" if self.state == TrialState.FAIL else self.state.name.lower()


def records(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
    return [TrialRecord(t) for t in study.get_trials(deepcopy=False, states=states)]


def distinct_complete(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that are not repeats of an earlier architecture (feasible or not)."""
    return [r.trial for r in records(study, (TrialState.COMPLETE,)) if not r.is_repeat]


def distinct_evaluated(study: optuna.Study) -> list[FrozenTrial]:
    """Architectures a search has evaluated: trained to the end, then those stopped at a rung
    (the order a resumed multi-fidelity search tells its scheduler about them)."""
    return [r.trial for state in (TrialState.COMPLETE, TrialState.PRUNED) for r in records(study, (state,)) if r.evaluated]


def is_feasible(trial: FrozenTrial) -> bool:
    return TrialRecord(trial).feasible


def outcome(trial: FrozenTrial) -> str:
    return TrialRecord(trial).outcome


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """How the study's architectures ended: trained (feasible or not), stopped at a rung, left
    untrained for their size, failed; repeats of an earlier architecture apart."""
    ended = collections.Counter(r.outcome for r in records(study))
    return {
        "trained": ended["complete"] + ended["infeasible"],
        "infeasible": ended["infeasible"],
        "stopped at a rung": ended["stopped at a rung"],
        "not trained (size bounds)": ended["not trained"],
        "failed": ended["failed"],
        "repeats": ended["repeat"],
    }


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front: Optuna's non-dominated COMPLETE trials among those that meet every
    constraint, without repeated architectures (trials stopped at a rung are PRUNED: never here)."""
    if not distinct_complete(study):
        return []
    return [t for t in study.best_trials if not TrialRecord(t).is_repeat]


def find_duplicate(
    study: optuna.Study, arch: dict[str, Any], number: int, recipe: dict[str, Any] | None = None
) -> FrozenTrial | None:
    """An earlier trial of the same architecture (and recipe): finished, stopped at a rung,
    left untrained for its size, or still running."""
    for r in records(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if r.number != number and not r.is_repeat and r.arch == arch and r.recipe == (recipe or None):
            return r.trial
    return None


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """A stored study's own attributes, read through what callers ask of it."""

    study: optuna.Study

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    @property
    def task(self) -> Task:
        """The study's task (studies made before it was recorded: from their metrics)."""
        if TASK in self.attrs:
            return get_task(self.attrs[TASK])
        return task_for_metrics(self.study.metric_names or [])

    @property
    def teacher(self) -> str | None:
        return self.attrs.get(TEACHER)

    @property
    def teacher_metrics(self) -> dict[str, Any]:
        return self.attrs.get(TEACHER_METRICS) or {}

    @property
    def teacher_eval_sets(self) -> dict[str, dict[str, float]]:
        """The teacher's quality on each extra evaluation set (`[[eval]]`): the sets' names."""
        return self.attrs.get(EVAL_SETS, {})

    @property
    def provenance(self) -> dict[str, Any]:
        """What reading the data found and how quality is computed (`nas.pareto.provenance`)."""
        return {DATA_INFO: self.attrs.get(DATA_INFO), EVAL_SETS_INFO: self.attrs.get(EVAL_SETS_INFO), SCORING: self.attrs.get(SCORING)}

    @property
    def constraints(self) -> dict[str, float] | None:
        """The bounds its trials were judged by (None: never recorded)."""
        return self.attrs.get(CONSTRAINTS)

    @property
    def sampler(self) -> str | None:
        return self.attrs.get(SAMPLER)

    @property
    def rank_check(self) -> dict[str, Any] | None:
        return self.attrs.get(RANK_CHECK) or self.attrs.get("fidelity")

    @property
    def distilled(self) -> dict[str, dict[str, Any]]:
        """{trial number (text): the record of its full distillation}. Each trial's record is
        its own study attribute, so runs on different trials never overwrite each other's
        (studies made before keep theirs in one `distilled` dict)."""
        records = dict(self.attrs.get(DISTILLED, {}))
        records.update({k.partition(":")[2]: v for k, v in self.attrs.items() if k.startswith(f"{DISTILLED}:") and v})
        return records

    def record_distilled(self, number: int, record: dict[str, Any]) -> None:
        self.study.set_user_attr(f"{DISTILLED}:{number}", record)

    def record_rank_check(self, result: dict[str, Any]) -> None:
        self.study.set_user_attr(RANK_CHECK, result)

    def record_teachers(self, teachers: str, first: PreparedData, others: tuple[PreparedData, ...]) -> None:
        """The teachers' names, the first's metrics (quality is measured against it) and the
        others' own, what reading the data found and how quality is computed (the first
        teacher's cache)."""
        self.study.set_user_attr(TEACHER, teachers)
        self.study.set_user_attr(TEACHER_METRICS, first.teacher_metrics)
        if others:
            self.study.set_user_attr(OTHER_TEACHER_METRICS, [d.teacher_metrics for d in others])
        self.study.set_user_attr(DATA_INFO, first.data_info)
        self.study.set_user_attr(SCORING, first.scoring)

    def record_eval_sets(self, teacher_metrics: dict[str, Any], info: dict[str, Any]) -> None:
        self.study.set_user_attr(EVAL_SETS, teacher_metrics)
        self.study.set_user_attr(EVAL_SETS_INFO, info)

    def stamp(self, metric_names: list[str], task: str, constraints: dict[str, float], sampler: str) -> None:
        """Record what a search was started with (a resumed study keeps its sampler)."""
        if not self.study.metric_names:
            self.study.set_metric_names(metric_names)
        self.study.set_user_attr(TASK, task)
        self.study.set_user_attr(CONSTRAINTS, constraints)
        self.study.set_user_attr(SAMPLER, self.sampler or sampler)


def distilled_records(study: optuna.Study) -> dict[str, dict[str, Any]]:
    return StudyRecord(study).distilled


def task_of(study: optuna.Study) -> Task:
    return StudyRecord(study).task
