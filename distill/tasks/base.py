"""The task protocol: what every task module implements, and the small types it speaks in.

A task (causal LM, sentence embedding, ...) is one module in `distill/tasks/` with one object
implementing `Task`, registered by name in `distill/tasks/__init__.py`. Everything outside
`distill/tasks/` works through this protocol and never asks which task it holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from distill.intermediate import check_layer_map

if TYPE_CHECKING:
    from distill.cache import PreparedData
    from distill.teachers import TeacherSource


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
    """A loaded teacher: the model (eval mode), its tokenizer, and what else the task keeps of
    it (the pooling of a sentence encoder)."""

    model: Any
    tokenizer: Any
    source: TeacherSource
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Batch:
    """The model inputs of some items (tensors on the device) and the lengths of their axes
    that a batch may cut (e.g. "tokens": the longest real sequence of trimmed paragraphs)."""

    inputs: dict[str, torch.Tensor]
    lengths: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CardParts:
    """What a model card and the progress bar need to know of a task's exports."""

    library_name: str
    pipeline_tag: str
    usage: str
    """Python that loads the export with the ecosystem's own loader; `{path}` is the folder"""
    items: str
    """what one training item is called, plural ("blocks", "paragraphs")"""
    rate: str
    """the progress bar's throughput unit ("tok_s", "sent_s")"""
    rate_in_tokens: bool
    """whether that rate counts tokens (items x the `[data]` block_length) or items"""


class Task(Protocol):
    """One kind of student. Methods are listed in the order a study calls them.

    Once per study, in the driver (`distill.cache.prepare`): `scoring` (where the task has it),
    `load_teacher`, `check_space`, `load_data` (before `load_teacher` when the task trains its
    teacher first), `encode` for each split, `output_arrays` and `teacher_outputs` for each
    split's batches, `importance`, then `as_student`, `evaluate` and `size` on the teacher itself.
    In the driver, for every sampled architecture: `param_counts` (a bound on size is checked
    before a trial starts).
    In each trial and full run (`nas.search.trial`, `nas.full`): `build_student`, then per micro-batch
    `batch` and `forward` (the loss terms of `distill.losses` take their inputs from there),
    `lengths` for the budget, `evaluate` and `size` at the end; `export` after a full run.

    Optional: `train_teacher(cfg, texts, folder, data)`, for a task whose teacher a spec may
    train on first use (`[teacher.train]`); specs of other tasks refuse that section.
    `scoring(data)`: how quality is computed (e.g. sacrebleu's signatures), stored with the
    study; raises `InputError` when this machine cannot compute it.
    `rescore(references, outputs, data)`: for tasks that generate text, the shell command that
    recomputes the stored scores from the saved files (model cards print it).
    `on_policy_batch(student, batch)`: the batch with its targets replaced by what the student
    samples from the batch's inputs (GKD's on-policy data; a budget's `on_policy` share).
    `stacks(arch, data)`: the student's stacks of layers and the teacher's
    (`distill.intermediate.Stack` by stack name), for tasks whose `forward` gives
    `student_states` / `student_attentions` and `state_masks` per stack and whose teacher
    outputs "hidden_states" / "attentions" (`teacher_<stack>_hidden` / `_attentions`).
    """

    name: str
    """the registry name, the spec's `study.task`"""
    space: type
    """the `[space]` dataclass: sampled by Optuna, checked against the teacher"""
    data_config: type
    """the `[data]` dataclass; its `EVAL_KEYS` are what an `[[eval]]` table may set (the
    rest is `[data]`'s) and its `EVAL_LIMIT` the count an extra set leaves at 0 (all of it)"""
    metrics: tuple[Metric, ...]
    """quality metrics first; the first quality metric is the default objective"""
    loss_params: type
    """the frozen dataclass of the parameters `[distill.loss]` takes besides term weights"""
    default_weights: dict[str, float]
    """term weights of `[distill.loss]` when the spec gives none"""
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

    def load_data(self, data: Any, base_dir: Path, seed: int) -> dict[str, list[Any]]:
        """The study's examples (documents, sentence pairs) split three ways ("train", "valid",
        "eval") with `seed`, no example in two splits (once per study)."""
        ...

    def load_teacher(self, source: TeacherSource) -> Teacher:
        """Load the teacher (once per study, and where a worker needs it live); raise
        `InputError` when it is not a model this task can learn from."""
        ...

    def check_space(self, space: Any, teacher_config: Any) -> None:
        """Before any trial runs: raise `InputError` naming `space.<key>` when some
        architecture of `space` cannot be built from this teacher."""
        ...

    def encode(self, examples: list[Any], teacher: Teacher, data: Any, split: str) -> dict[str, np.ndarray]:
        """One split's examples as arrays of items (token blocks, padded paragraphs), as many
        as `data` allows for `split`; stored as `<split>_<name>.npy`."""
        ...

    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        """Real (unpadded) tokens of each item of `split`, (N,)."""
        ...

    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        """The inputs of the items `idx` of `split`."""
        ...

    def output_arrays(self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: Any) -> dict[str, OutputArray]:
        """The cached arrays of the teacher output `groups` per item of the study's data."""
        ...

    def teacher_outputs(self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The teacher's outputs of `groups` on `batch` (no gradient), named as in `distill.losses`."""
        ...

    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        """Unit importance scores on a calibration batch, for students sliced from the teacher."""
        ...

    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        """A student of the sampled architecture (initialized as the architecture says)."""
        ...

    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        """The teacher wrapped like a student, to measure it with `evaluate` and `size`."""
        ...

    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The student's side of the loss on `batch`: the `wanted` values of `values`. `teacher`
        holds one teacher's outputs on the batch (empty without a teacher), for students that
        are run on what the teacher produced; with several teachers it is called once each."""
        ...

    def evaluate(self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device) -> dict[str, Any]:
        """Every quality metric (a float each) on `split` ("valid" or "eval") against the cached
        teacher outputs. A task whose metrics score text the student generates also returns
        that text under `OUTPUTS` (a list, one string per item; `scores_and_text` parts the
        two) and caches what it is scored against as `<split>_references` and, where there are
        inputs to show, `<split>_sources`: studies save them, so that other tools recompute
        the scores."""
        ...

    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        """Every size metric of what would ship."""
        ...

    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        """`params` and `non_embedding_params` of what `build_student` would build, counted from
        the architecture alone (equal to `size`'s): a bound on them is checked before a trial
        builds or trains anything."""
        ...

    def describe(self, arch: dict[str, Any]) -> str:
        """A one-line summary of an architecture."""
        ...

    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        """Write a folder the ecosystem loads (`card.usage` shows how), without the model card."""
        ...


@dataclasses.dataclass(frozen=True)
class TopKLossParams:
    """The parameters of a loss on the teacher's top-k distributions, besides the term weights."""

    temperature: float = 1.0
    """softmax temperature of the teacher's cached distribution on training items and of the KL"""
    top_k: int = 32
    """teacher log-probabilities kept per position (the rest is one tail bucket)"""
    jsd_beta: float = 0.5
    """the generalized JSD's beta (`jsd`), strictly between 0 and 1"""
    skew_alpha: float = 0.1
    """the skew of DistiLLM's skew KL and skew reverse KL, strictly between 0 and 1"""
    self_evolution_share: float = 0.5
    """self-evolution KD: the share of each batch's tokens, the hardest for the student, that
    learn through the proxy distribution (0: none, plain forward KL)"""
    self_evolution_prior: float = 0.5
    """self-evolution KD: the weight of the prior (reference and teacher) in the proxy"""
    full_vocabulary: bool = False
    """divergences over the whole vocabulary from a live teacher's full logits (needs
    `teacher_outputs = "live"`) instead of its cached top k and a tail bucket"""
    layer_map: str | tuple[int, ...] = "init"
    """which student layers the intermediate-layer terms match with which teacher layers:
    init, uniform, last-K, or a list of teacher states (`distill.intermediate.layer_pairs`)"""

    def __post_init__(self) -> None:
        check_layer_map(self.layer_map)
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {self.top_k}")
        for key in ("jsd_beta", "skew_alpha"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"{key}: must be strictly between 0 and 1, got {getattr(self, key)}")
        if not 0.0 <= self.self_evolution_share <= 1.0:
            raise ValueError(f"self_evolution_share: must be between 0 and 1, got {self.self_evolution_share}")
        if not 0.0 <= self.self_evolution_prior < 1.0:  # at 1 the proxy holds nothing of the student
            raise ValueError(f"self_evolution_prior: must be in [0, 1), got {self.self_evolution_prior}")


def stack_outputs(out: Any, stack: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """A transformers output's hidden states (embedding output first) and attention maps of
    one stack: `<stack>_hidden_states` of an encoder-decoder, `hidden_states` otherwise."""
    if f"{stack}_hidden_states" in {f.name for f in dataclasses.fields(out)}:
        return getattr(out, f"{stack}_hidden_states"), getattr(out, f"{stack}_attentions")
    return out.hidden_states, out.attentions


def layer_outputs(out: Any, stacks: tuple[str, ...], groups: set[str]) -> dict[str, torch.Tensor]:
    """The teacher output groups "hidden_states" (`teacher_<stack>_hidden`, (B, L + 1, T, D))
    and "attentions" (`teacher_<stack>_attentions`, (B, L, H, T, T)) from a transformers output."""
    res: dict[str, torch.Tensor] = {}
    for stack in stacks if groups & set(LAYER_GROUPS) else ():
        hidden, maps = stack_outputs(out, stack)
        if "hidden_states" in groups:
            res[f"teacher_{stack}_hidden"] = torch.stack(hidden, 1).float()
        if "attentions" in groups:
            res[f"teacher_{stack}_attentions"] = torch.stack(maps, 1).float()
    return res


def student_layers(out: Any, masks: dict[str, torch.Tensor | None], wanted: set[str]) -> dict[str, Any]:
    """The student's side of intermediate-layer terms from a transformers output: its hidden
    states and attention maps per stack of `masks` (each stack's mask of real tokens)."""
    res: dict[str, Any] = {"state_masks": masks}
    if "student_states" in wanted:
        res["student_states"] = {stack: stack_outputs(out, stack)[0] for stack in masks}
    if "student_attentions" in wanted:
        res["student_attentions"] = {stack: stack_outputs(out, stack)[1] for stack in masks}
    return res


def layer_arrays(groups: set[str], stacks: dict[str, tuple[int, int, int, int, str | None]]) -> dict[str, OutputArray]:
    """The cached arrays of the "hidden_states" and "attentions" groups; `stacks` gives each
    stack's (layers, heads, width, positions, the `Batch.lengths` key its positions are cut
    to, or None)."""
    out = {}
    for stack, (layers, heads, width, positions, key) in stacks.items():
        if "hidden_states" in groups:
            out[f"teacher_{stack}_hidden"] = OutputArray((layers + 1, positions, width), "float16", {1: key} if key else {})
        if "attentions" in groups:
            cut = {2: key, 3: key} if key else {}
            out[f"teacher_{stack}_attentions"] = OutputArray((layers, heads, positions, positions), "float16", cut)
    return out


# The teacher output groups of intermediate layers, and what `forward` gives for them.
LAYER_GROUPS = ("hidden_states", "attentions")
LAYER_VALUES = frozenset({"student_states", "student_attentions", "state_masks"})


def layer_groups(wanted: set[str]) -> set[str]:
    """The intermediate-layer groups whose student side `wanted` asks for."""
    return {group for group, value in zip(LAYER_GROUPS, ("student_states", "student_attentions")) if value in wanted}

OUTPUTS = "outputs"
"""The key under which `Task.evaluate` returns the text a student generated"""


def scores_and_text(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """What `Task.evaluate` returned, as its metrics and the text it scored (None when the task
    generates none)."""
    metrics = dict(metrics)
    return metrics, metrics.pop(OUTPUTS, None)


def trimmed(ids: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded items (N, L) as a batch cut to its longest real sequence (the cache pads every
    item to the full length): token ids and mask, int64 on `device`."""
    length = max(1, int(mask.sum(1).max()))
    return (
        torch.from_numpy(ids[:, :length].astype(np.int64)).to(device),
        torch.from_numpy(mask[:, :length].astype(np.int64)).to(device),
    )


def topk_arrays(vocab: int, params: dict[str, Any], positions: int, cut: dict[int, str]) -> dict[str, OutputArray]:
    """The cached arrays of the "topk" teacher output group: the teacher's `top_k` most likely
    tokens at each of `positions` and their log-probabilities. (Full logits, the "logits"
    group, are never cached: the loss config asks a live teacher for them.)"""
    from distill.errors import InputError

    if params["top_k"] > vocab:
        raise InputError(f"distill.loss.top_k: {params['top_k']} exceeds the teacher's vocabulary ({vocab})")
    shape = (positions, params["top_k"])
    return {"teacher_logprobs": OutputArray(shape, "float16", cut), "teacher_indices": OutputArray(shape, "int32", cut)}


def logit_outputs(
    logits: torch.Tensor, groups: set[str], params: dict[str, Any], labels: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The teacher output groups made from its next-token logits (B, T, V): "topk" (see
    `topk_outputs`), "logits", the logits themselves (a live teacher's, for divergences over
    the whole vocabulary), and "confidence": its entropy and its cross-entropy on the reference
    `labels` (B, T) at each position (`teacher_entropy`, `teacher_nll`, (B, T), at temperature
    1), by which several teachers are chosen per token."""
    out = topk_outputs(logits, params) if "topk" in groups else {}
    if "logits" in groups:
        out["teacher_logits"] = logits
    if "confidence" in groups:
        logp = torch.log_softmax(logits.float(), dim=-1)
        out["teacher_entropy"] = -(logp.exp() * logp).sum(-1)
        out["teacher_nll"] = -logp.gather(-1, labels.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    return out


def confidence_arrays(groups: set[str], positions: int, cut: dict[int, str]) -> dict[str, OutputArray]:
    """The cached arrays of the "confidence" group (see `logit_outputs`)."""
    if "confidence" not in groups:
        return {}
    return {name: OutputArray((positions,), "float32", cut) for name in ("teacher_entropy", "teacher_nll")}


def topk_outputs(logits: torch.Tensor, params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The "topk" group from teacher logits (B, T, V): log-probabilities at the loss's
    temperature, and indices, of its `top_k` tokens, each (B, T, k)."""
    top = torch.log_softmax(logits.float() / params["temperature"], dim=-1).topk(params["top_k"], dim=-1)
    return {"teacher_logprobs": top.values, "teacher_indices": top.indices.int()}


# Size metrics every task measures the same way (what ships is counted without its training state).
PARAMS = Metric("params", "size", "min", "{:,.0f}", "parameters")
NON_EMBEDDING_PARAMS = Metric("non_embedding_params", "size", "min", "{:,.0f}", "non-embedding parameters")
PEAK_MEMORY = Metric("peak_memory_mb", "size", "min", "{:.2f}", "peak memory, MiB (batch 1)")


def slice_teacher(student: torch.nn.Module, data: PreparedData, auto_class: str, init: Any, layer_pick: str) -> dict[str, Any]:
    """Overwrite `student` with its slice of the study's teacher (loaded with `auto_class`):
    `init(student, teacher, batch, layer_pick, scores=...)` of `search_spaces`, with the unit
    importance the study measured once on its calibration batch. Returns those scores."""
    teacher = data.teacher_source.load_model(auto_class)
    scores = torch.load(data.path / "importance.pt", map_location="cpu", weights_only=True)
    init(student, teacher, None, layer_pick, scores=scores)
    return scores


def check_space_fits(space: Any, teacher_config: Any) -> None:
    """A search space's own check against the teacher (`space.check_teacher`), as one error
    line that names the `space.<key>`."""
    from distill.errors import InputError

    try:
        space.check_teacher(teacher_config)
    except ValueError as exc:
        raise InputError(f"space.{exc}") from None


def check_positions(config: Any, length: int, key: str) -> None:
    """Raise `InputError` naming `key` when items of `length` tokens exceed the positions the
    teacher of `config` has (its `max_position_embeddings`; none for relative positions)."""
    from distill.errors import InputError

    most = getattr(config, "max_position_embeddings", None)
    if isinstance(most, int) and length > most:
        raise InputError(f"{key}: {length} tokens exceed the teacher's {most} positions (max_position_embeddings); at most {most}")


def quality_metrics(task: Task) -> dict[str, str]:
    """Quality metric names and their directions."""
    return {m.name: m.direction for m in task.metrics if m.kind == "quality"}


def format_metric(task: Task, name: str, value: Any) -> str:
    """A value as the task formats that metric (6 significant digits for anything else)."""
    metric = next((m for m in task.metrics if m.name == name), None)
    if metric is not None:
        return metric.format(value)
    return f"{value:.6g}" if isinstance(value, (int, float)) else str(value)


def trains_teacher(task: Task) -> bool:
    """Whether the task can train its teacher on first use (`[teacher.train]`)."""
    return callable(getattr(task, "train_teacher", None))


__all__ = [
    "Batch",
    "CardParts",
    "Metric",
    "OutputArray",
    "Task",
    "Teacher",
    "TopKLossParams",
    "check_positions",
    "OUTPUTS",
    "format_metric",
    "scores_and_text",
    "quality_metrics",
    "slice_teacher",
    "trains_teacher",
    "confidence_arrays",
    "layer_arrays",
    "layer_groups",
    "layer_outputs",
    "logit_outputs",
    "stack_outputs",
    "student_layers",
    "topk_arrays",
    "topk_outputs",
    "trimmed",
]
