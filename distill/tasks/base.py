"""The task protocol: what every task module implements, and the small types it speaks in.

A task (causal LM, sentence embedding, ...) is one module in `distill/tasks/` with one object
of a subclass of `Task`, registered by name in `distill/tasks/__init__.py`. Everything outside
`distill/tasks/` works through this protocol and never asks which task it holds. What only the
text tasks share (top-k outputs, layer outputs, padded token items) is `distill.tasks.text`.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from distill.cache import PreparedData
    from distill.intermediate import Stack
    from distill.runtime import OnnxGraph
    from distill.teachers import TeacherSource, TeacherTraining


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric a task reports, declared once: spec validation, stored trial attributes, the
    front's columns, the report and the model card all read it from here."""

    name: str
    kind: str
    """"quality" (of the student's outputs on held-out data) or "size" (of the student itself)"""
    direction: str
    """"min" or "max": which way is better"""
    fmt: str
    """how to print a value, e.g. "{:.2f}" """
    label: str
    """what it is, in words, for tables and model cards"""
    runtime: str = ""
    """the precision of the edge runtime it is measured in ("fp32", "int8": `distill.runtime`,
    only where a spec or command asks), "" for a metric of the PyTorch model"""

    def format(self, value: Any) -> str:
        return self.fmt.format(value) if isinstance(value, (int, float)) else "-"


@dataclasses.dataclass(frozen=True)
class OutputArray:
    """How one teacher output is stored per item in the cache: its shape at the full item
    length, its dtype, and which axes are cut to a length of each batch when read (axis ->
    a key of `Batch.lengths`, e.g. {1: "tokens"} for hidden states of trimmed paragraphs)."""

    shape: tuple[int, ...]
    dtype: str
    cut: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Teacher:
    """A loaded teacher: the model (eval mode), its tokenizer (None for a teacher whose inputs
    are not text: the cache then keeps none), and what else the task keeps of it (the pooling
    of a sentence encoder)."""

    model: Any
    tokenizer: Any
    source: TeacherSource
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    student_tokenizer: Any = None
    """the student's tokenizer where it is not this teacher's (a teacher of another family,
    beside the first teacher of a study): `Task.teacher_outputs` then gives only the "ranked"
    group, the teacher's run on its own tokens of the same text, at the positions aligned with
    the student's (`distill.tasks.text.align_to_teacher`)"""


@dataclasses.dataclass
class Batch:
    """The model inputs of some items (tensors on the device) and the lengths of their axes
    that a batch may cut (e.g. "tokens": the longest real sequence of trimmed paragraphs)."""

    inputs: dict[str, torch.Tensor]
    lengths: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CardParts:
    """What a model card and the progress bar need to know of a task's exports (the progress
    bar's count of the rate's unit per item is `Task.rate_per_item`)."""

    library_name: str
    pipeline_tag: str
    usage: str
    """Python that loads the export with the ecosystem's own loader; `{path}` is the folder"""
    items: str
    """what one training item is called, plural ("blocks", "texts")"""
    rate: str
    """the progress bar's throughput unit ("tok_s", "sent_s")"""
    tokenizer: str = ""
    """the tokenizer the export reads its inputs with, as the card names it ("the teacher's
    tokenizer"); "" for a student whose inputs are not text (the card says nothing of it)"""
    runtime_usage: str = ""
    """Python that runs the export's ONNX graphs (`distill.runtime`) with onnxruntime, numpy
    and the tokenizer alone; `{path}` is the folder, `{file}` a graph's file without its
    graph name (`.onnx`, `_int8.onnx`)"""


class Task(abc.ABC):
    """One kind of student. Methods are listed in the order a study calls them.

    Once per study, in the driver (`distill.cache.prepare`): `scoring`, `load_teacher`,
    `check_space`, `load_data` (before `load_teacher`, and `train_teacher` then, when the task
    trains its teacher first), `encode` for each split, `output_arrays` and `teacher_outputs`
    for each split's batches, `importance`, then `as_student`, `evaluate` and `size` on the
    teacher itself.
    In the driver, for every sampled architecture: `param_counts` (a bound on size is checked
    before a trial starts).
    In each trial and full run (`nas.search.trial`, `nas.full`, through `distill.run`):
    `build_student`, `stacks` (where a loss term pairs layers), then per micro-batch `batch`,
    `on_policy_batch` (on a budget's on-policy share) and `forward` (the loss terms of
    `distill.losses` take their inputs from there), `lengths` for the budget, `evaluate` and
    `size` at the end; `rate_per_item` when a full run's progress bar starts, `export` after a
    full run and `rescore` for its model card. Where the edge runtime is measured
    (`distill.runtime`: a trial of a spec with `[runtime]`, `nas distill --runtime`):
    `onnx_graphs` of a CPU copy of the student, then `runtime_speed` and `runtime_evaluate` on
    ONNX Runtime sessions of each precision.

    The abstract methods are what every task implements. The others have defaults that say
    the task has no such part (no teacher training, no outputs of its own, no stacks of
    layers): a task overrides those it has, and sets the class attribute that goes with it.
    """

    name: str
    """the registry name, the spec's `study.task`"""
    space: type
    """the `[space]` dataclass: sampled by Optuna, checked against the teacher"""
    data_config: type
    """the `[data]` dataclass"""
    metrics: tuple[Metric, ...]
    """quality metrics first; the first quality metric is the default objective"""
    loss_params: type
    """the frozen dataclass of the parameters `[loss]` takes besides term weights"""
    default_weights: dict[str, float]
    """term weights of `[loss]` when the spec gives none"""
    outputs: dict[str, tuple[str, ...]]
    """teacher output groups this task can compute, and the values each group gives"""
    values: frozenset[str]
    """what `forward` and `batch` give the loss terms (see `distill.losses`)"""
    eval_outputs: tuple[str, ...]
    """teacher output groups evaluation reads on the held-out splits"""
    held_out_params: dict[str, Any]
    """loss parameters replaced on held-out splits (the causal-LM KL is measured at T = 1)"""
    teacher_batch: int
    """items per teacher forward pass when the cache is made"""
    card: CardParts

    eval_keys: tuple[str, ...] = ("source",)
    """the `[data]` keys an `[[eval]]` table may set (where its examples come from, how many of
    them); the rest is `[data]`'s"""
    eval_limit: str = ""
    """the `[data]` key of how many held-out items to keep, which an `[[eval]]` set leaves at 0
    (all of them) unless its table says; "" where `[data]` has none"""
    trains_teacher: bool = False
    """whether `train_teacher` trains a teacher that a spec may ask for on first use
    (`[teacher.train]`); specs of other tasks refuse that section"""
    samples_on_policy: bool = False
    """whether `on_policy_batch` samples the student's own outputs (GKD's on-policy data; a
    budget's `on_policy` share); specs of other tasks refuse a share above 0"""

    def scoring(self, data: Any) -> dict[str, str]:
        """How quality is computed (e.g. sacrebleu's signatures), stored with the study; raise
        `InputError` when this machine cannot compute it. Called first, before the teacher
        loads. Default: nothing to record."""
        return {}

    @abc.abstractmethod
    def load_data(self, data: Any, base_dir: Path, seed: int) -> dict[str, list[Any]]:
        """The study's examples (documents, sentence pairs) split three ways ("train", "valid",
        "eval") with `seed`, no example in two splits (once per study)."""

    def train_teacher(self, cfg: TeacherTraining, examples: list[Any], folder: Path, data: Any) -> None:
        """Train a teacher on the training and validation `examples` and `save_pretrained` it
        (and its tokenizer) into `folder`, where `[teacher.train]` asks for one that does not
        exist yet (once per study, before `load_teacher`; only where `trains_teacher`)."""
        from distill.errors import InputError

        raise InputError(f"teacher.train: task {self.name} cannot train its teacher here; give an existing model")

    @abc.abstractmethod
    def load_teacher(self, source: TeacherSource) -> Teacher:
        """Load the teacher (once per study, and where a worker needs it live); raise
        `InputError` when it is not a model this task can learn from."""

    @abc.abstractmethod
    def check_space(self, space: Any, teacher_config: Any) -> None:
        """Before any trial runs: raise `InputError` naming `space.<key>` when some
        architecture of `space` cannot be built from this teacher."""

    @abc.abstractmethod
    def encode(self, examples: list[Any], teacher: Teacher, data: Any, split: str) -> dict[str, np.ndarray]:
        """One split's examples as arrays of items (token blocks, padded paragraphs), as many
        as `data` allows for `split`; stored as `<split>_<name>.npy`."""

    @abc.abstractmethod
    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        """Real (unpadded) tokens of each item of `split`, (N,)."""

    @abc.abstractmethod
    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        """The inputs of the items `idx` of `split`."""

    @abc.abstractmethod
    def output_arrays(self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: Any) -> dict[str, OutputArray]:
        """The cached arrays of the teacher output `groups` per item of the study's data."""

    @abc.abstractmethod
    def teacher_outputs(self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The teacher's outputs of `groups` on `batch` (no gradient), named as in `distill.losses`."""

    @abc.abstractmethod
    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        """Unit importance scores on a calibration batch, for students sliced from the teacher."""

    @abc.abstractmethod
    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        """A student of the sampled architecture (initialized as the architecture says)."""

    @abc.abstractmethod
    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        """The teacher wrapped like a student, to measure it with `evaluate` and `size`."""

    def stacks(self, arch: dict[str, Any], data: PreparedData) -> dict[str, Stack]:
        """The student's stacks of layers and the teacher's (`distill.intermediate.Stack` by
        stack name), when a loss term pairs their layers (once per trial, before training), for
        tasks whose `forward` gives `student_states` / `student_attentions` and `state_masks`
        per stack and whose teacher outputs "hidden_states" / "attentions"
        (`teacher_<stack>_hidden` / `_attentions`). Default: none (no such terms are allowed)."""
        return {}

    def on_policy_batch(self, student: torch.nn.Module, batch: Batch) -> Batch:
        """The batch with its targets replaced by what the student samples from the batch's
        inputs, on a budget's `on_policy` share of the training batches (before `forward`;
        only where `samples_on_policy`)."""
        raise NotImplementedError(f"task {self.name} has no outputs of its own to sample")

    @abc.abstractmethod
    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The student's side of the loss on `batch`: the `wanted` values of `values`. `teacher`
        holds one teacher's outputs on the batch (empty without a teacher), for students that
        are run on what the teacher produced; with several teachers it is called once each."""

    @abc.abstractmethod
    def evaluate(self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device) -> dict[str, Any]:
        """Every quality metric (a float each) on `split` ("valid" or "eval") against the cached
        teacher outputs. A task whose metrics score text the student generates also returns
        that text under `GENERATED` (a list, one string per item; `scores_and_text` parts the
        two) and caches what it is scored against as `<split>_references` and, where there are
        inputs to show, `<split>_sources`: studies save them, so that other tools recompute
        the scores."""

    @abc.abstractmethod
    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        """Every size metric of what would ship."""

    @abc.abstractmethod
    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        """`params` and `non_embedding_params` of what `build_student` would build, counted from
        the architecture alone (equal to `size`'s): a bound on them is checked before a trial
        builds or trains anything."""

    @abc.abstractmethod
    def describe(self, arch: dict[str, Any]) -> str:
        """A one-line summary of an architecture."""

    def rate_per_item(self, data: Any) -> int:
        """How many of the progress bar's unit (`card.rate`) one training item counts under the
        `[data]` section `data` (a block's tokens, for tokens/s); called when a full run's
        progress bar starts. Default: 1, the rate counts items."""
        return 1

    @abc.abstractmethod
    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        """Write a folder the ecosystem loads (`card.usage` shows how), without the model card."""

    @abc.abstractmethod
    def onnx_graphs(self, student: torch.nn.Module, data: PreparedData) -> dict[str, OnnxGraph]:
        """The ONNX graphs of what ships (`distill.runtime.OnnxGraph` by file name: one for a
        model run once per input, an encoder and a decoder for one that generates from a
        source); `student` is a CPU copy in fp32 that may be wrapped. Called by
        `distill.runtime.export` for a trial's runtime metrics and an export's runtime files."""

    @abc.abstractmethod
    def runtime_speed(self, sessions: dict[str, Any], data: PreparedData) -> dict[str, float]:
        """The task's runtime speed metrics (`distill.runtime.with_runtime`'s `speed`, unprefixed) of the
        graphs running in ONNX Runtime `sessions` (by graph name), as `size` times PyTorch."""

    @abc.abstractmethod
    def runtime_evaluate(self, sessions: dict[str, Any], data: PreparedData, split: str) -> dict[str, Any]:
        """`evaluate` of the graphs running in ONNX Runtime `sessions`: every quality metric
        on `split`, computed as `evaluate` computes it (text generation greedy)."""

    def rescore(self, references: str, outputs: str, data: dict[str, Any]) -> str | None:
        """For tasks that generate text: the shell command that recomputes the stored scores
        from the saved files `references` and `outputs` (model cards print it; `data` is the
        study's `[data]`). Default: None, no such command."""
        return None


GENERATED = "generated"
"""The key under which `Task.evaluate` returns the text a student generated"""


def scores_and_text(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """What `Task.evaluate` returned, as its metrics and the text it scored (None when the task
    generates none)."""
    metrics = dict(metrics)
    return metrics, metrics.pop(GENERATED, None)


# Size metrics every task measures the same way (what ships is counted without its training state).
PARAMS = Metric("params", "size", "min", "{:,.0f}", "parameters")
NON_EMBEDDING_PARAMS = Metric("non_embedding_params", "size", "min", "{:,.0f}", "non-embedding parameters")
PEAK_MEMORY = Metric("peak_memory_mb", "size", "min", "{:.2f}", "peak memory, MiB (batch 1)")


def quality_metrics(task: Task) -> dict[str, str]:
    """Quality metric names and their directions (those measured in the runtime included)."""
    return {m.name: m.direction for m in task.metrics if m.kind == "quality"}


def format_metric(task: Task, name: str, value: Any) -> str:
    """A value as the task formats that metric (6 significant digits for anything else)."""
    metric = next((m for m in task.metrics if m.name == name), None)
    if metric is not None:
        return metric.format(value)
    return f"{value:.6g}" if isinstance(value, (int, float)) else str(value)


__all__ = [
    "NON_EMBEDDING_PARAMS",
    "GENERATED",
    "PARAMS",
    "PEAK_MEMORY",
    "Batch",
    "CardParts",
    "Metric",
    "OutputArray",
    "Task",
    "Teacher",
    "format_metric",
    "quality_metrics",
    "scores_and_text",
]
