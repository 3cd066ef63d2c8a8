"""Study specs: `studies/<name>.toml` parsed into frozen dataclasses, validated on load.

Every error is an `InputError` whose message names the key and what is allowed; the command
line prefixes it with the spec's path.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from distill.data import DataConfig
from distill.errors import InputError
from distill.loop import DistillConfig, FullConfig
from distill.teachers import TeacherConfig, TeacherTraining
from search_spaces import DecoderSpace, EncoderSpace

TASKS = ("causal-lm", "embedding")
QUALITY_METRICS = {"perplexity": "min", "kl": "min", "top1_agreement": "max"}
EMBEDDING_METRICS = {"cosine": "max", "spearman": "max", "retrieval": "max"}
SIZE_METRICS = {"params": "min", "non_embedding_params": "min", "latency_ms": "min", "peak_memory_mb": "min"}
TASK_METRICS = {
    "causal-lm": (QUALITY_METRICS, SIZE_METRICS),
    "embedding": (EMBEDDING_METRICS, SIZE_METRICS | {"latency_ms_b32": "min"}),
}
TASK_SPACES: dict[str, type] = {"causal-lm": DecoderSpace, "embedding": EncoderSpace}


class SpecError(InputError):
    """A study spec that cannot be used."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The study itself (the `[study]` section)."""

    name: str = ""
    """the study's name; outputs go to studies/<name>/ (default: the spec file's stem)"""
    task: str = "causal-lm"
    """what the students learn: causal-lm (next-token KD) or embedding (sentence embeddings)"""
    trials: int = 8
    """total number of completed, distinct architectures to evaluate"""
    seed: int = 0
    """seed of the sampler, the data split and every trial's training"""
    concurrency: int = 2
    """trials running at the same time"""
    storage: str = ""
    """an Optuna storage URL (default: sqlite:///studies/<name>/optuna.db)"""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: unknown {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.trials < 1:
            raise ValueError(f"trials: must be >= 1, got {self.trials}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.name and (Path(self.name).name != self.name or self.name.startswith(".")):
            raise ValueError(f"name: must be a plain folder name, got {self.name!r}")


@dataclasses.dataclass(frozen=True)
class Objectives:
    """What the front trades off (the `[objectives]` section). Each entry is a metric name,
    optionally with its direction: "top1_agreement:max"."""

    quality: tuple[str, ...] = ("perplexity",)
    """causal-lm: perplexity (min), kl (min), top1_agreement (max); embedding: cosine, spearman,
    retrieval (all max); default: perplexity or cosine"""
    size: tuple[str, ...] = ("params",)
    """params, non_embedding_params, latency_ms, peak_memory_mb, and for embedding latency_ms_b32 (all min)"""

    def __post_init__(self) -> None:
        every = [TASK_METRICS[t] for t in TASKS]
        for group, allowed in (
            ("quality", {k: v for q, _ in every for k, v in q.items()}),
            ("size", {k: v for _, z in every for k, v in z.items()}),
        ):
            entries = tuple(getattr(self, group))
            object.__setattr__(self, group, entries)
            if not entries:
                raise ValueError(f"{group}: needs at least one metric; allowed: {', '.join(allowed)}")
            for entry in entries:
                name, _, direction = str(entry).partition(":")
                if name not in allowed:
                    raise ValueError(f"{group}: unknown metric {name!r}; allowed: {', '.join(allowed)}")
                if direction not in ("", "min", "max"):
                    raise ValueError(f"{group}: direction of {name!r} must be min or max, got {direction!r}")
        names = [n for n, _ in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError("quality/size: a metric is listed twice")

    @property
    def metrics(self) -> list[tuple[str, str]]:
        """(name, "min" | "max") for every objective, quality first."""
        table = {k: v for t in TASKS for group in TASK_METRICS[t] for k, v in group.items()}
        out = []
        for entry in (*self.quality, *self.size):
            name, _, direction = entry.partition(":")
            out.append((name, direction or table[name]))
        return out


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one trial gets from Ray (the `[resources]` section)."""

    cpus: float = 1.0
    """CPU cores per trial (also its torch threads)"""
    gpus: float = 0.0
    """GPUs per trial; a fraction (0.5) packs several trials on one GPU"""

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise ValueError(f"cpus: must be > 0, got {self.cpus}")
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            raise ValueError(f"gpus: must be a fraction in (0, 1] or a whole number, got {self.gpus}")


SECTIONS: dict[str, type] = {
    "study": StudyConfig,
    "teacher": TeacherConfig,
    "data": DataConfig,
    "space": DecoderSpace,  # EncoderSpace for task embedding
    "distill": DistillConfig,
    "full": FullConfig,
    "objectives": Objectives,
    "resources": Resources,
}
NESTED: dict[tuple[str, str], type] = {("teacher", "train"): TeacherTraining}


@dataclasses.dataclass(frozen=True)
class StudySpec:
    path: Path
    study: StudyConfig
    teacher: TeacherConfig
    data: DataConfig
    space: DecoderSpace | EncoderSpace
    distill: DistillConfig
    full: FullConfig
    objectives: Objectives
    resources: Resources

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
        return dataclasses.replace(self, study=dataclasses.replace(self.study, storage=url))

    @property
    def storage_url(self) -> str:
        return self.study.storage or f"sqlite:///{self.out_dir / 'optuna.db'}"


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check a TOML value against a field's type hint; lists become tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _check_type(key, value, options[0])
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


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"{key}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in raw.items():
        if name not in fields:
            raise SpecError(f"{key}.{name}: unknown key; allowed: {', '.join(sorted(fields))}")
        section = key.split(".")[-1]
        if (section, name) in NESTED:
            kwargs[name] = _build(NESTED[(section, name)], value, f"{key}.{name}")
        else:
            kwargs[name] = _check_type(f"{key}.{name}", value, hints[name])
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise SpecError(f"{key}.{exc}") from None
    except TypeError as exc:  # a required field is missing
        raise SpecError(f"{key}: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`distill.steps=50` -> (["distill", "steps"], 50); values are read as TOML, else text."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise SpecError(f"override {item!r}: must be section.key=value, e.g. distill.steps=50")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return parts, value


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read, override and validate a study spec."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("file not found (a study spec is a .toml file, e.g. studies/demo-lm.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override {item!r}: {part} is not a table")
        node[parts[-1]] = value
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown section; allowed: {', '.join(SECTIONS)}")
    if "teacher" not in raw:
        raise SpecError("teacher: required section (teacher.model: a hub id or a local folder)")
    task = raw.get("study", {}).get("task", "causal-lm") if isinstance(raw.get("study"), dict) else "causal-lm"
    sections = dict(SECTIONS, space=TASK_SPACES.get(task, DecoderSpace))
    objectives = raw.setdefault("objectives", {})
    if task == "embedding" and isinstance(objectives, dict):
        objectives.setdefault("quality", ["cosine"])
    parts = {name: _build(cls, raw.get(name, {}), name) for name, cls in sections.items()}
    quality, size = TASK_METRICS[parts["study"].task]
    for group, allowed in (("quality", quality), ("size", size)):
        for entry in getattr(parts["objectives"], group):
            name = entry.partition(":")[0]
            if name not in allowed:
                raise SpecError(
                    f"objectives.{group}: {name!r} is not a metric of task {parts['study'].task}; allowed: {', '.join(allowed)}"
                )
    return StudySpec(path=path.resolve(), **parts)
