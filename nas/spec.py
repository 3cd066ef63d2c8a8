"""Study specs: `studies/<name>.toml` parsed into frozen dataclasses, validated on load.

Every error is an `InputError` whose message names the key and what is allowed; the command
line prefixes it with the spec's path. What a section allows comes from the task the spec
names (`study.task`): its search space, its loss terms and parameters, its metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from distill.data import MIX_KEYS, Part
from distill.errors import InputError
from distill.loop import FULL_RUN, Budget
from distill.losses import LOSSES
from distill.objective import LossConfig, allowed_terms, on_policy_terms
from distill.precision import PRECISIONS
from distill.runtime import PRECISIONS as RUNTIME_PRECISIONS
from distill.runtime import precision_of
from distill.tasks import DEFAULT_TASK, TASKS, Task, get_task
from distill.teacher_outputs import aligned_only
from distill.teachers import TeacherConfig, TeacherTraining
from nas.recipe import RecipeSpace, apply_recipe, describe_recipe
from nas.search.sampling import SAMPLERS


class SpecError(InputError):
    """A study spec that cannot be used."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The study itself (the `[study]` section)."""

    name: str = ""
    """the study's name; outputs go to studies/<name>/ (default: the spec file's stem)"""
    task: str = DEFAULT_TASK
    """what the students learn: one of the tasks registered in distill.tasks"""
    trials: int = 8
    """total number of completed, distinct architectures to evaluate"""
    seed: int = 0
    """seed of the sampler, the data split and every trial's training"""
    concurrency: int = 2
    """trials running at the same time"""
    storage: str = ""
    """an Optuna storage URL, a database SQLAlchemy knows: sqlite:///path/to/optuna.db,
    postgresql://user@host/db, mysql://... (default: sqlite:///studies/<name>/optuna.db)"""
    sampler: str = ""
    """how Optuna proposes architectures: tpe, nsga2, gp or random (default: tpe for a new
    study, the stored study's own when it is resumed)"""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: unknown {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.sampler and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if self.trials < 1:
            raise ValueError(f"trials: must be >= 1, got {self.trials}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.name and (Path(self.name).name != self.name or self.name.startswith(".")):
            raise ValueError(f"name: must be a plain folder name, got {self.name!r}")
        if self.storage:
            problem = storage_problem(self.storage)
            if problem:
                raise ValueError(f"storage: {problem}")


JOURNAL = "journal:///"
"""the storage URL prefix of an Optuna journal file (`journal:///study.log`, relative to the
working folder; `journal:////shared/study.log`, absolute), which many processes on many
machines may write through a shared filesystem"""


def storage_problem(url: str) -> str | None:
    """Why `url` is not an Optuna storage URL (a database URL SQLAlchemy knows, or a journal
    file), or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = (
        "an Optuna storage URL such as sqlite:///path/to/optuna.db, postgresql://user@host/db "
        f"or {JOURNAL}path/to/study.log"
    )
    if url.startswith(JOURNAL):
        return None if url.removeprefix(JOURNAL) else f"{url!r} names no file; give {allowed}"
    try:
        make_url(url).get_dialect()
    except NoSuchModuleError:  # an ArgumentError too
        return f"{url!r}: unknown database {url.partition(':')[0]!r}; give {allowed}"
    except ArgumentError:
        return f"{url!r} is not a URL; give {allowed}"
    return None


@dataclasses.dataclass(frozen=True)
class Objectives:
    """What the front trades off (the `[objectives]` section). Each entry is a metric of the
    task, optionally with its direction: "top1_agreement:max"."""

    quality: tuple[str, ...] = ()
    """quality metrics of the task (default: its first, e.g. perplexity or cosine)"""
    size: tuple[str, ...] = ("params",)
    """size metrics of the task: params, non_embedding_params, latency_ms, peak_memory_mb, ..."""

    def __post_init__(self) -> None:
        for group in ("quality", "size"):
            entries = tuple(getattr(self, group))
            object.__setattr__(self, group, entries)
            for entry in entries:
                name, _, direction = str(entry).partition(":")
                if direction not in ("", "min", "max"):
                    raise ValueError(f"{group}: direction of {name!r} must be min or max, got {direction!r}")
        names = [e.partition(":")[0] for e in (*self.quality, *self.size)]
        if len(set(names)) != len(names):
            raise ValueError("quality/size: a metric is listed twice")

    def resolve(self, task: Task) -> Objectives:
        """Checked against the task's metrics, every entry with its direction."""
        declared = {m.name: m for m in task.metrics}
        quality = self.quality or (next(m.name for m in task.metrics if m.kind == "quality"),)
        out = {}
        for group, entries in (("quality", quality), ("size", self.size)):
            allowed = [m.name for m in task.metrics if m.kind == group]
            if not entries:
                raise ValueError(f"{group}: needs at least one metric; allowed: {', '.join(allowed)}")
            resolved = []
            for entry in entries:
                name, _, direction = entry.partition(":")
                if name not in allowed:
                    raise ValueError(
                        f"{group}: {name!r} is not a metric of task {task.name}; allowed: {', '.join(allowed)}"
                    )
                resolved.append(f"{name}:{direction or declared[name].direction}")
            out[group] = tuple(resolved)
        return Objectives(**out)

    @property
    def metrics(self) -> list[tuple[str, str]]:
        """(name, "min" | "max") for every objective, quality first (of a resolved spec)."""
        return [(e.partition(":")[0], e.partition(":")[2]) for e in (*self.quality, *self.size)]


@dataclasses.dataclass(frozen=True)
class Bound:
    """One constraint: a metric of the task and the worst value a trial may have, an upper bound
    for a metric to minimize (params = 5e6: at most 5M), a lower one for a metric to maximize
    (cosine = 0.7: at least 0.7)."""

    metric: str
    limit: float
    direction: str

    def violation(self, value: float) -> float:
        """How far `value` is beyond the bound, relative to it: > 0 violated, <= 0 met
        (Optuna's convention; relative, so that samplers adding violations up weigh a bound on
        parameters and one on perplexity alike)."""
        beyond = value - self.limit if self.direction == "min" else self.limit - value
        return beyond / abs(self.limit) if self.limit else beyond

    def describe(self, value: float) -> str:
        return f"{self.metric} {value:.6g} {'>' if self.direction == 'min' else '<'} {self.limit:.6g}"


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a trial must meet to be on the front and to be picked by `nas distill --best` (the
    `[constraints]` section). Bounds on size metrics are checked before a trial trains (the
    parameter counts even before it starts); a trial that misses one is kept, marked and never
    trained."""

    bounds: tuple[Bound, ...] = ()

    def known(self, metrics: dict[str, Any]) -> list[tuple[Bound, float]]:
        """The bounds whose metric `metrics` holds a measured (finite) value for, with it."""
        pairs = [(b, float(metrics[b.metric])) for b in self.bounds if metrics.get(b.metric) is not None]
        return [(b, v) for b, v in pairs if math.isfinite(v)]

    def violations(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Each bound's violation for the metrics measured so far (> 0: violated)."""
        return {b.metric: b.violation(v) for b, v in self.known(metrics)}

    def missed(self, metrics: dict[str, Any]) -> str | None:
        """Why `metrics` break the constraints, or None."""
        return ", ".join(b.describe(v) for b, v in self.known(metrics) if b.violation(v) > 0) or None

    def on(self, kind_of: dict[str, str], kind: str) -> Constraints:
        """Only the bounds on metrics of one kind ("size" or "quality")."""
        return Constraints(tuple(b for b in self.bounds if kind_of[b.metric] == kind))


@dataclasses.dataclass(frozen=True)
class MultiFidelity:
    """Successive halving on the front (the `[multi_fidelity]` section): every trial reports
    its quality at rungs of its brief budget, and one that is dominated among the trials that
    reached the same rung stops there (stored as PRUNED, never on the front)."""

    enabled: bool = True
    """stop dominated trials early (off: every trial runs its whole brief budget)"""
    rungs: tuple[float, ...] = (0.25, 0.5, 1.0)
    """shares of the brief budget at which a trial reports; the last is 1"""
    reduction: float = 2.0
    """a trial goes on from a rung if no trial that reached it before dominates it there, or if
    it is among the best ceil(n/reduction) of the n trials there so far (Pareto order). It is
    judged when it arrives, against those before it: how many go on depends on the order (of
    8 trials that arrive best first and dominate each other in turn, only the first goes on;
    arriving worst first, all do)"""

    def __post_init__(self) -> None:
        rungs = tuple(self.rungs)
        object.__setattr__(self, "rungs", rungs)
        if not rungs or rungs[-1] != 1.0 or any(not a < b for a, b in zip((0.0, *rungs), rungs)):
            raise ValueError(f"rungs: increasing shares in (0, 1] ending at 1, got {list(rungs)}")
        if not self.reduction > 1:
            raise ValueError(f"reduction: must be > 1, got {self.reduction}")


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one trial gets from Ray (the `[resources]` section)."""

    cpus: float = 1.0
    """CPU cores per trial (also its torch threads)"""
    gpus: float = 0.0
    """GPUs per trial; a fraction (0.5) packs several trials on one GPU"""
    precision: str = "auto"
    """what the teachers, the brief and full runs and evaluation compute in: "bf16" (bfloat16
    autocast over fp32 weights, teachers loaded in bfloat16; losses and optimizer state stay
    fp32), "fp32", or "auto": bf16 where the device computes it natively (a CUDA GPU with bf16,
    a CPU with AVX512-BF16 or AMX), else fp32"""

    def __post_init__(self) -> None:
        if not 0 < self.cpus < math.inf:
            raise ValueError(f"cpus: must be a number > 0, got {self.cpus}")
        if not 0 <= self.gpus < math.inf or (self.gpus > 1 and self.gpus != int(self.gpus)):
            raise ValueError(f"gpus: must be a fraction in (0, 1] or a whole number, got {self.gpus}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}")


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The edge runtime every trial is also measured in (the `[runtime]` section): the
    student exported to ONNX and run by ONNX Runtime on the trial's CPU threads, with fp32
    weights and with int8 weights (dynamic quantization): latency, throughput, file size and
    the held-out quality of that model, as `runtime_<precision>_<metric>` metrics. Off by
    default: exporting and measuring adds seconds to every trial."""

    measure: tuple[str, ...] = ()
    """precisions measured at the end of every trial: any of fp32, int8. Those of runtime
    metrics that [objectives] or [constraints] name are measured whatever this lists (their
    speed and size before training, as other size metrics are)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", tuple(self.measure))
        unknown = [p for p in self.measure if p not in RUNTIME_PRECISIONS]
        if unknown:
            raise ValueError(f"measure: unknown precision {unknown[0]!r}; allowed: {', '.join(RUNTIME_PRECISIONS)}")

    def with_named(self, metrics: list[str]) -> Runtime:
        """Measuring also the precisions of the runtime metrics among `metrics`, in a fixed order."""
        wanted = set(self.measure) | {precision_of(n) for n in metrics} - {None}
        return Runtime(tuple(p for p in RUNTIME_PRECISIONS if p in wanted))


SECTIONS = (
    "study", "teacher", "data", "eval", "space", "brief", "loss", "full", "objectives", "constraints", "multi_fidelity",
    "resources", "runtime",
)  # fmt: skip
NESTED: dict[tuple[str, str], type] = {("teacher", "train"): TeacherTraining}
RENAMED = {"distill": "[brief] (the brief run of every trial; its [distill.loss] table is [loss])"}
"""sections that were renamed: an older spec's is refused in one line that names the new one"""
# Keys of the brief run's section that moved to `[loss]`, for a helpful error on older specs.
MOVED = {
    "kd_weight": "forward_kl",
    "ce_weight": "ce",
    "cosine_weight": "cosine",
    "mse_weight": "mse",
    "hidden_weight": "hidden",
    "relation_weight": "relations",
    "temperature": "temperature",
    "top_k": "top_k",
}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """An extra evaluation set (an `[[eval]]` table): every document of its source, scored for
    every trial and full run with the task's quality metrics, beside the held-out split."""

    name: str
    data: Any
    """the task's data section: `[data]`'s, with the source keys of the table"""


@dataclasses.dataclass(frozen=True)
class StudySpec:
    path: Path
    study: StudyConfig
    teacher: TeacherConfig
    data: Any
    """the task's data section (`task.data_config`)"""
    space: Any
    """the task's search space (`task.space`)"""
    brief: Budget
    """`[brief]`: the brief run of every trial"""
    full: Budget
    """`nas distill`: the full run of a chosen architecture"""
    loss: LossConfig
    """`[loss]`, the loss of both runs"""
    objectives: Objectives
    constraints: Constraints
    multi_fidelity: MultiFidelity
    resources: Resources
    evals: tuple[EvalSet, ...] = ()
    """`[[eval]]`: extra evaluation sets"""
    other_teachers: tuple[TeacherConfig, ...] = ()
    """the teachers after the first when the spec lists several (`[[teacher]]`), in order"""
    recipe: RecipeSpace = RecipeSpace()
    """`[space.recipe]`: the parts of the loss and budgets searched with the architecture"""
    runtime: Runtime = Runtime()
    """`[runtime]`: the precisions every trial is measured at in the edge runtime (those the
    objectives and constraints name included)"""

    @property
    def task(self) -> Task:
        return get_task(self.study.task)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the spec are relative to its folder."""
        return self.path.parent

    @property
    def name(self) -> str:
        return self.study.name or self.path.stem

    @property
    def out_dir(self) -> Path:
        return self.base_dir / self.name

    def with_storage(self, url: str) -> StudySpec:
        """The spec with the storage of `nas ... --storage URL`."""
        problem = storage_problem(url)
        if problem:
            raise SpecError(f"--storage: {problem}")
        return dataclasses.replace(self, study=dataclasses.replace(self.study, storage=url))

    @property
    def storage_url(self) -> str:
        url = self.study.storage or f"sqlite:///{self.out_dir / 'optuna.db'}"
        if url.startswith(JOURNAL):  # absolute: Ray runs trials in folders of their own
            return JOURNAL + str(Path(url.removeprefix(JOURNAL)).absolute())
        return url


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check a TOML value against a field's type hint; lists become tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        for option in options[:-1]:  # the first type the value has
            with contextlib.suppress(SpecError):
                return _check_type(key, value, option)
        if len(options) == 1:
            return _check_type(key, value, options[0])
        try:
            return _check_type(key, value, options[-1])
        except SpecError:
            names = " or ".join("a list" if typing.get_origin(h) is tuple else h.__name__ for h in options)
            raise SpecError(f"{key}: must be {names}, got {value!r}") from None
    if origin is tuple:
        if not isinstance(value, list):
            raise SpecError(f"{key}: must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_check_type(key, v, inner) for v in value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise SpecError(f"{key}: must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return float(value) if hint is float else value


def _construct(cls: Any, kwargs: dict[str, Any], key: str) -> Any:
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise SpecError(f"{key}.{exc}") from None
    except TypeError as exc:  # a required field is missing
        raise SpecError(f"{key}: {exc}") from None


def _build(cls: type, raw: Any, key: str, defaults: dict[str, Any] | None = None) -> Any:
    return _construct(cls, _fields(cls, raw, key, defaults), key)


def _fields(cls: type, raw: Any, key: str, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A table's values checked against the dataclass `cls`'s fields (nested tables built)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{key}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = dict(defaults or {})
    for name, value in raw.items():
        if name not in fields:
            if key == "brief" and name in MOVED:
                raise SpecError(f"{key}.{name}: the loss has its own section now: [loss] {MOVED[name]} = ...")
            raise SpecError(f"{key}.{name}: unknown key; allowed: {', '.join(sorted(fields))}")
        section = re.sub(r"\[\d+\]$", "", key.split(".")[-1])  # teacher[1] is a teacher table
        if (section, name) in NESTED:
            kwargs[name] = _build(NESTED[(section, name)], value, f"{key}.{name}")
        else:
            kwargs[name] = _check_type(f"{key}.{name}", value, hints[name])
    return kwargs


def _build_data(task: Task, raw: Any) -> Any:
    """`[data]`; with `[[data.mix]]` tables, a mixture: each table has the source keys an
    `[[eval]]` table may set and a weight, and the rest (how examples are cut and how many)
    is `[data]`'s. Each part must be a valid `[data]` on its own."""
    if not isinstance(raw, dict) or "mix" not in raw or "mix" not in {f.name for f in dataclasses.fields(task.data_config)}:
        return _build(task.data_config, raw, "data")  # (a task's data section without mixtures: mix is an unknown key)
    raw = dict(raw)
    tables = raw.pop("mix")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise SpecError("data.mix: must be tables, each written [[data.mix]] with a source and a weight")
    source_keys = [k for k in task.eval_keys if k != task.eval_limit]
    clash = [k for k in raw if k in source_keys]
    if clash:
        raise SpecError(f"data.{clash[0]}: with [[data.mix]] each part names its own source; move it into a [[data.mix]] table")
    common = _fields(task.data_config, raw, "data")
    hints = typing.get_type_hints(task.data_config)
    unset = {f.name: f.default for f in dataclasses.fields(task.data_config) if f.name in source_keys}
    parts = []
    for i, table in enumerate(tables):
        key = f"data.mix[{i}]"
        for k in table:
            if k != "weight" and k not in source_keys:
                raise SpecError(f"{key}.{k}: unknown key; allowed: weight, {', '.join(source_keys)} (the rest is [data]'s)")
        for k, what in (("source", "where the part's examples come from, as in [data]"), ("weight", "its share of the examples")):
            if k not in table:
                raise SpecError(f"{key}.{k}: required ({what})")
        settings = unset | {k: _check_type(f"{key}.{k}", v, hints[k]) for k, v in table.items() if k != "weight"}
        alone = {k: v for k, v in common.items() if k not in MIX_KEYS}
        _construct(task.data_config, alone | settings, key)  # the part alone is a valid [data]
        parts.append(_construct(Part, {"weight": _check_type(f"{key}.weight", table["weight"], float), "settings": settings}, key))
    return _construct(task.data_config, common | parts[0].settings | {"mix": tuple(parts)}, "data")


def _build_brief(raw: Any) -> Budget:
    """`[brief]`: a budget without validation, checkpoints or early stopping (a brief run
    reports once, at its end)."""
    if isinstance(raw, dict):
        for name in ("eval_every", "checkpoint_every", "patience"):
            if name in raw:
                raise SpecError(f"brief.{name}: the brief run of a trial neither validates nor checkpoints; set it in [full]")
    return _build(Budget, raw, "brief")


def _build_loss(task: Task, raw: Any, key: str, teachers: int = 1) -> LossConfig:
    """`[loss]`: a weight per loss term the task allows, the task's loss parameters,
    where the teacher's outputs come from, and how `teachers` teachers combine."""
    if not isinstance(raw, dict):
        raise SpecError(f"{key}: must be a table")
    terms = allowed_terms(task)
    hints = typing.get_type_hints(task.loss_params)
    weights, params, where = dict(task.default_weights), {}, {}
    for name, value in raw.items():
        if name in terms:
            weights[name] = _check_type(f"{key}.{name}", value, float)
        elif name in hints:
            params[name] = _check_type(f"{key}.{name}", value, hints[name])
        elif name in ("teacher_outputs", "combine"):
            where[name] = _check_type(f"{key}.{name}", value, str)
        elif name == "teacher_weights":
            where[name] = _check_type(f"{key}.{name}", value, tuple[float, ...])
            if len(where[name]) != teachers:
                raise SpecError(f"{key}.{name}: {len(where[name])} weight(s) for {teachers} teacher(s) ([[teacher]] tables)")
        else:
            allowed = ", ".join([*terms, *hints, "teacher_outputs", "teacher_weights", "combine"])
            raise SpecError(f"{key}.{name}: not a loss term or parameter of task {task.name}; allowed: {allowed}")
    if not any(w > 0 for w in weights.values()):
        raise SpecError(f"{key}: at least one term needs a weight > 0; terms: {', '.join(terms)}")
    aligned = [n for n, w in weights.items() if w > 0 and aligned_only(LOSSES[n].needs)]
    if aligned and teachers == 1:
        raise SpecError(
            f"{key}.{aligned[0]}: teaches from a [[teacher]] whose tokenizer is not the student's, beside the first; "
            "the spec has one teacher (use forward_kl or another term over the shared vocabulary)"
        )
    if teachers > 1:
        where.setdefault("teacher_weights", (1.0,) * teachers)
    loss_params = _construct(task.loss_params, params, key)
    return _construct(LossConfig, {"weights": weights, "params": dataclasses.asdict(loss_params), **where}, key)


def _check_on_policy(task: Task, loss: LossConfig, budget: Budget, key: str) -> None:
    if budget.on_policy > 0 and not task.samples_on_policy:
        raise SpecError(f"{key}.on_policy: task {task.name} has no outputs of its own to learn from; leave it 0")
    if budget.on_policy > 0 and not on_policy_terms(loss):
        raise SpecError(
            f"{key}.on_policy: needs a divergence term that reads no reference in [loss] (forward_kl, reverse_kl, jsd, ...)"
        )
    if budget.on_policy > 0 and len(loss.teacher_weights) > 1:
        raise SpecError(f"{key}.on_policy: on-policy batches are scored by one live teacher; the spec lists {len(loss.teacher_weights)}")


def _build_recipe(task: Task, raw: Any) -> RecipeSpace:
    """`[space.recipe]`: the parts of the recipe searched with the architecture."""
    recipe = _build(RecipeSpace, raw, "space.recipe")
    try:
        recipe.check(task)
    except ValueError as exc:
        raise SpecError(f"space.recipe.{exc}") from None
    return recipe


def _check_recipes(task: Task, recipe: RecipeSpace, loss: LossConfig, brief: Budget, full: Budget) -> None:
    """Every recipe the search may sample trains: its loss and budgets are valid."""
    parts = [(f.name, getattr(recipe, f.name)) for f in dataclasses.fields(recipe) if getattr(recipe, f.name)]
    for values in itertools.product(*(choices for _, choices in parts)):
        chosen = dict(zip([name for name, _ in parts], values))
        try:
            trial_loss, trial_brief = apply_recipe(loss, brief, chosen)
            _, trial_full = apply_recipe(loss, full, chosen)
        except ValueError as exc:
            raise SpecError(f"space.recipe: the recipe {describe_recipe(chosen)!r} cannot train: {exc}") from None
        for key, budget in (("brief", trial_brief), ("full", trial_full)):
            try:
                _check_on_policy(task, trial_loss, budget, key)
            except SpecError as exc:
                raise SpecError(f"space.recipe: the recipe {describe_recipe(chosen)!r}: {exc}") from None


def _build_teachers(task: Task, raw: Any) -> tuple[TeacherConfig, ...]:
    """`[teacher]`, or several `[[teacher]]` tables sharing the student's tokenizer."""
    tables = raw if isinstance(raw, list) else [raw]
    if not tables:
        raise SpecError("teacher: list at least one [[teacher]] table")
    teachers = []
    for i, table in enumerate(tables):
        key = f"teacher[{i}]" if isinstance(raw, list) else "teacher"
        teacher = _build(TeacherConfig, table, key)
        if teacher.train is not None and not task.trains_teacher:
            raise SpecError(f"{key}.train: task {task.name} cannot train its teacher here; give an existing model")
        teachers.append(teacher)
    return tuple(teachers)


def _build_constraints(task: Task, raw: Any) -> Constraints:
    """`[constraints]`: metric = bound, for metrics of the task."""
    if not isinstance(raw, dict):
        raise SpecError("constraints: must be a table of metric = bound, e.g. params = 5e6")
    declared = {m.name: m for m in task.metrics}
    bounds = []
    for name, value in raw.items():
        if name not in declared:
            raise SpecError(f"constraints.{name}: not a metric of task {task.name}; allowed: {', '.join(declared)}")
        limit = _check_type(f"constraints.{name}", value, float)
        if not math.isfinite(limit):
            raise SpecError(f"constraints.{name}: must be a finite number, got {value}")
        bounds.append(Bound(name, limit, declared[name].direction))
    return Constraints(tuple(bounds))


def _build_evals(task: Task, raw: Any, data: Any) -> tuple[EvalSet, ...]:
    """`[[eval]]`: a name and a data source like `[data]`'s; every other data key is `[data]`'s."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpecError("eval: must be tables, each written [[eval]] with a name and a data source")
    sets: list[EvalSet] = []
    hints = typing.get_type_hints(task.data_config)
    for i, table in enumerate(raw):
        key = f"eval[{i}]"
        name = table.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise SpecError(f"{key}.name: required, letters, digits, '_' and '-' (it names columns and files), got {name!r}")
        if name in {s.name for s in sets}:
            raise SpecError(f"{key}.name: {name!r} is used by an earlier [[eval]] table")
        if name == "eval":
            raise SpecError(f"{key}.name: 'eval' names the study's own held-out split; choose another")
        fields = {}
        for k, value in table.items():
            if k == "name":
                continue
            if k not in task.eval_keys:
                allowed = ", ".join(task.eval_keys)
                raise SpecError(f"{key}.{k}: unknown key; allowed: name, {allowed} (the rest is [data]'s)")
            fields[k] = _check_type(f"{key}.{k}", value, hints[k])
        if "source" not in fields:
            raise SpecError(f"{key}.source: required (where the set's examples come from, as in [data])")
        # The source and how much of it are the table's (default: all of it); the cut is [data]'s.
        inherited = {k: v for k, v in dataclasses.asdict(data).items() if k not in (*task.eval_keys, *MIX_KEYS)}
        inherited |= {task.eval_limit: 0} if task.eval_limit else {}
        sets.append(EvalSet(name, _construct(task.data_config, inherited | fields, key)))
    return tuple(sets)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`brief.steps=50` -> (["brief", "steps"], 50); values are read as TOML, else text."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise SpecError(f"{key.strip() or item}: an override must be section.key=value, e.g. brief.steps=50; got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return parts, value


SPEC = "SPEC"
"""How errors about the spec file itself (not one of its keys) name it: the command line's argument"""


def read_toml(path: Path) -> dict[str, Any]:
    """A spec file's tables; an error names the file (`SPEC`) or the key a syntax error is at."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "file not found"
        raise SpecError(f"{SPEC}: {what} (a study spec is a .toml file, e.g. studies/demo-lm.toml)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{SPEC}: cannot read the file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte order mark (Windows editors) is fine
    except UnicodeDecodeError as exc:
        found = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else f"a byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise SpecError(f"{SPEC}: not UTF-8 text (found {found}); TOML files are UTF-8, save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(toml_error(text, str(exc))) from None


def toml_error(text: str, message: str) -> str:
    """A TOML syntax error named by the key (or table) on the line it is at: "study.trials: not
    valid TOML (line 3, column 9): ..."; "line 3" where that line starts with neither."""
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at is None:  # at the end of the document
        return f"{SPEC}: not valid TOML: {message}"
    number = int(at.group(1))
    table, key = "", ""
    for i, line in enumerate(text.splitlines()[:number], start=1):
        header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]*)", line)
        bare = re.match(r"\s*([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*(?:=|\s|$)", line)
        if header:
            table = key = header.group(1)
        elif i == number and bare:
            key = f"{table}.{bare.group(1)}" if table else bare.group(1)
        else:
            key = ""
    return f"{key or f'line {number}'}: not valid TOML (line {number}, column {at.group(2)}): {message[: at.start()]}"


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read, override and validate a study spec."""
    path = Path(path)
    raw = read_toml(path)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"{'.'.join(parts[: i + 1])}: not a table; the override {item!r} sets a key inside it")
        node[parts[-1]] = value
    renamed = sorted(set(raw) & set(RENAMED))
    if renamed:
        raise SpecError(f"{renamed[0]}: the section is now {RENAMED[renamed[0]]}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown section; allowed: {', '.join(SECTIONS)}")
    if "teacher" not in raw:
        raise SpecError("teacher: required section (teacher.model: a hub id or a local folder)")
    study = _build(StudyConfig, raw.get("study", {}), "study")
    task = get_task(study.task)
    brief, loss_raw = raw.get("brief", {}), raw.get("loss", {})
    teachers = _build_teachers(task, raw["teacher"])
    objectives = _build(Objectives, raw.get("objectives", {}), "objectives")
    try:
        objectives = objectives.resolve(task)
    except ValueError as exc:
        raise SpecError(f"objectives.{exc}") from None
    data = _build_data(task, raw.get("data", {}))
    brief_budget = _build_brief(brief)
    full_budget = _build(Budget, raw.get("full", {}), "full", defaults=FULL_RUN)
    loss = _build_loss(task, loss_raw, "loss", len(teachers))
    space_raw = dict(raw.get("space", {})) if isinstance(raw.get("space", {}), dict) else raw["space"]
    recipe = _build_recipe(task, space_raw.pop("recipe", {}) if isinstance(space_raw, dict) else {})
    for key, budget in (("brief", brief_budget), ("full", full_budget)):
        _check_on_policy(task, loss, budget, key)
    if brief_budget.workers != 1:
        raise SpecError("brief.workers: each trial's brief run is one process (Ray runs trials side by side); set [full] workers")
    _check_recipes(task, recipe, loss, brief_budget, full_budget)
    constraints = _build_constraints(task, raw.get("constraints", {}))
    named = [n for n, _ in objectives.metrics] + [b.metric for b in constraints.bounds]
    return StudySpec(
        path=path.resolve(),
        study=study,
        teacher=teachers[0],
        other_teachers=teachers[1:],
        data=data,
        space=_build(task.space, space_raw, "space"),
        recipe=recipe,
        brief=brief_budget,
        full=full_budget,
        loss=loss,
        objectives=objectives,
        constraints=constraints,
        evals=_build_evals(task, raw.get("eval", []), data),
        multi_fidelity=_build(MultiFidelity, raw.get("multi_fidelity", {}), "multi_fidelity"),
        resources=_build(Resources, raw.get("resources", {}), "resources"),
        runtime=_build(Runtime, raw.get("runtime", {}), "runtime").with_named(named),
    )
