"""What the text tasks (causal LM, sentence embedding, translation) share beside the task
protocol: students and teachers of `transformers`, items of token ids, and the teacher's
next-token distributions, hidden states and attention maps as teacher outputs. A task of
another kind implements `distill.tasks.base.Task` without any of it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.intermediate import check_layer_map, run_with_layers
from distill.precision import autocast
from distill.tasks.base import OutputArray

if TYPE_CHECKING:
    from distill.cache import PreparedData

logger = logging.getLogger(__name__)


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
    self_evolution_prior: float = 1.0
    """self-evolution KD: the largest share of the prior (reference and teacher, half and half)
    in a hard token's target, reached as its difficulty grows far above the batch's mean (0:
    plain forward KL)"""
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
        if not 0.0 <= self.self_evolution_prior <= 1.0:
            raise ValueError(f"self_evolution_prior: must be between 0 and 1, got {self.self_evolution_prior}")


def stack_outputs(out: Any, stack: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """A transformers output's hidden states (embedding output first) and attention maps of
    one stack: `<stack>_hidden_states` of an encoder-decoder, `hidden_states` otherwise."""
    if f"{stack}_hidden_states" in {f.name for f in dataclasses.fields(out)}:
        return getattr(out, f"{stack}_hidden_states"), getattr(out, f"{stack}_attentions")
    return out.hidden_states, out.attentions


LOGITS_BUDGET = 256 * 2**20
"""bytes a teacher's forward pass may spend on next-token logits and the copies made of them"""


def rows_within(length: int, vocab: int, most: int) -> int:
    """How many rows of `length` positions (at most `most`) a forward pass takes at once so that
    their next-token logits over `vocab` stay within `LOGITS_BUDGET` (see `by_rows`)."""
    return max(1, min(most, LOGITS_BUDGET // (3 * 4 * length * vocab)))


def by_rows(
    run: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    inputs: dict[str, torch.Tensor],
    vocab: int,
    positions: int | None = None,
) -> dict[str, torch.Tensor]:
    """`run(inputs)`, a teacher's outputs on a batch, computed a few rows at a time where the
    batch's next-token logits (fp32, three copies: the logits, their log-softmax, what is
    taken of it) would pass `LOGITS_BUDGET`: at a 151,936-token vocabulary, 128-token rows
    take 230 MiB each. The outputs are the same, concatenated along the batch. `positions`:
    those with logits in a row (default: the inputs' second axis)."""
    n, length = next(iter(inputs.values())).shape[:2]
    rows = rows_within(positions or length, vocab, n)
    if rows >= n:
        return run(inputs)
    parts = [run({k: v[i : i + rows] for k, v in inputs.items()}) for i in range(0, n, rows)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


HEAD_BUDGET = 128 * 2**20
"""bytes of fp32 next-token logits and the copies made of them (scaled, log-softmax, its
exponent) that a pass over a model's output head holds at once (`next_token_chunks`): 56
positions at a 151,936-token vocabulary, each copy 34 MB, just over the 32 MiB from which
glibc's malloc always maps a block afresh and unmaps it when freed. Smaller blocks come from
its heap, which fragments under PyTorch's transient blocks and is not given back."""

_SPLIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> whether its head splits off


@torch.no_grad()
def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(its base model, its output head) where a causal LM's logits are its output head applied
    to its base model's last hidden state, as for GPT-2, Llama, Qwen2 and Mistral: shown once
    per model on a short input, in eval mode and the run's precision. None where they are not,
    as for a model that soft-caps its logits (Gemma 2), scales them or adds a bias after the
    head: its logits are then taken whole."""
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if base is None or base is model or head is None:
        return None
    if model not in _SPLIT:
        _SPLIT[model] = _same_logits(model, base, head)
    return (base, head) if _SPLIT[model] else None


def _same_logits(model: torch.nn.Module, base: torch.nn.Module, head: torch.nn.Module) -> bool:
    device = next(model.parameters()).device
    probe = torch.arange(1, 9, device=device).unsqueeze(0) % model.config.vocab_size
    training = model.training
    model.eval()
    try:
        with autocast(device):
            want = model(input_ids=probe).logits.float()
            got = head(base(input_ids=probe).last_hidden_state).float()
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:  # a base that takes other inputs
        logger.debug("%s: logits taken whole (%s)", type(model).__name__, e)
        return False
    finally:
        model.train(training)
    return got.shape == want.shape and (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())


def next_token_chunks(
    model: torch.nn.Module, layers: set[str], input_ids: torch.Tensor
) -> tuple[Any, Iterator[tuple[slice, torch.Tensor]]]:
    """A causal LM run on `input_ids` (B, L) (under the device's autocast, with the hidden
    states and attention maps the intermediate-layer groups `layers` ask for), and its
    next-token logits at the B x (L - 1) positions, flattened: a generator of (positions,
    fp32 logits (n, V)) over slices of `HEAD_BUDGET`. Where the model's head can be split off
    (`split_head`), the output head runs a slice at a time, so that the (B, L - 1, V) logits
    are never held: at a 151,936-token vocabulary, 127 positions of them are 74 MiB in fp32.
    Returns the model's output (its base model's, when split) and the generator."""
    parts = split_head(model)
    out = run_with_layers(parts[0] if parts else model, layers, input_ids=input_ids)
    flat = (out.last_hidden_state if parts else out.logits)[:, :-1].flatten(0, 1)
    step = -(-HEAD_BUDGET // (4 * 4 * model.config.vocab_size))

    def chunks() -> Iterator[tuple[slice, torch.Tensor]]:
        for start in range(0, len(flat), step):
            part = flat[start : start + step]
            if parts:
                with autocast(part.device):
                    part = parts[1](part)
            yield slice(start, start + len(part)), part.float()

    return out, chunks()


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

def trimmed(ids: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded items (N, L) as a batch cut to its longest real sequence (the cache pads every
    item to the full length): token ids and mask, int64 on `device`."""
    length = max(1, int(mask.sum(1).max()))
    return (
        torch.from_numpy(ids[:, :length].astype(np.int64)).to(device),
        torch.from_numpy(mask[:, :length].astype(np.int64)).to(device),
    )


def padded_rows(rows: list[list[int]], tokenizer: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows of different lengths as one batch (N, longest) padded with the tokenizer's
    pad token (its EOS where it has none), and the mask of real tokens, int64 on `device`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    return ids, torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)


def topk_arrays(vocab: int, params: dict[str, Any], positions: int, cut: dict[int, str]) -> dict[str, OutputArray]:
    """The cached arrays of the "topk" teacher output group: the teacher's `top_k` most likely
    tokens at each of `positions` and their log-probabilities. (Full logits, the "logits"
    group, are never cached: the loss config asks a live teacher for them.)"""
    from distill.errors import InputError

    if params["top_k"] > vocab:
        raise InputError(f"loss.top_k: {params['top_k']} exceeds the teacher's vocabulary ({vocab})")
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


def ranked_arrays(groups: set[str], params: dict[str, Any], positions: int, cut: dict[int, str]) -> dict[str, OutputArray]:
    """The cached arrays of the "ranked" group of a teacher of another tokenizer (`ranked_at`)."""
    if "ranked" not in groups:
        return {}
    return {
        "teacher_ranked": OutputArray((positions, params["top_k"]), "float16", cut),
        "teacher_aligned": OutputArray((positions,), "int8", cut),
    }


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


def token_spans(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text that token `ids` (none of them special) decode to, and each token's (start,
    end) in it; (-1, -1) for a token that has none of its own (part of a character split
    across tokens, or a decoding that is not a prefix of the whole). Where the text encodes
    back to the same tokens, its offsets; otherwise each prefix decoded in turn."""
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] == list(ids):
        return text, [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    spans, before = [], ""
    for i in range(len(ids)):
        after = tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)
        ok = text.startswith(after) and len(after) > len(before) and "\ufffd" not in after[len(before) :]
        spans.append((len(before), len(after)) if ok and text.startswith(before) else (-1, -1))
        before = after
    return text, spans


def _content_start(text: str, start: int, end: int) -> int:
    """The first character of `text[start:end]` that is not white space; -1 where there is none."""
    for i in range(max(start, 0), min(end, len(text))):
        if not text[i].isspace():
            return i
    return -1


def _starts(tokenizer: Any, ids: list[int], text: str, spans: Any) -> dict[int, int]:
    """Which token's content starts at each character of `text`: the first one whose span
    begins there. A token that decodes to white space alone starts nothing, even where its
    span says otherwise (the space a tokenizer with `add_prefix_space` puts before the text
    has an offset over its first character), and of the bytes of one character split across
    tokens the first starts it."""
    out: dict[int, int] = {}
    for k, (a, b) in enumerate(spans):
        c = _content_start(text, a, b)
        if c >= 0 and c not in out and tokenizer.decode([ids[k]]).strip():
            out[c] = k
    return out


def align_to_teacher(
    student_tokenizer: Any, student_ids: list[int], teacher_tokenizer: Any, most: int | None = None, bos: bool = False
) -> tuple[list[int], list[int]]:
    """A teacher whose tokenizer differs from the student's, on the student's tokens: the
    teacher's tokens of the same text (at most `most`; after its BOS where `bos` and its
    tokenizer puts one first), and for each student token the index of the teacher token
    that starts at the same character (white space before a word aside: one tokenizer puts
    it in the word's token, another in a token of its own), or -1 where none does. The
    student's special tokens cut the text: its EOS (between packed documents, or ending a
    sentence) becomes the teacher's EOS, and the two are aligned. The teacher's prediction of a
    token is then its distribution over the next token at the position before it, as the
    student's is.

    Universal logit distillation (Boizard et al., 2024) pairs the two sequences position by
    position; tokens of different lengths drift apart from the first difference, so here a
    position counts only where both tokenizers start a token at the same character."""
    special, eos = set(student_tokenizer.all_special_ids), teacher_tokenizer.eos_token_id
    teacher_ids: list[int] = [teacher_tokenizer.bos_token_id] if bos and _puts_bos(teacher_tokenizer) else []
    index = [-1] * len(student_ids)
    i = 0
    while i < len(student_ids):
        if student_ids[i] in special:
            if student_ids[i] == student_tokenizer.eos_token_id and eos is not None:
                index[i] = len(teacher_ids)
                teacher_ids.append(eos)
            i += 1
            continue
        j = i
        while j < len(student_ids) and student_ids[j] not in special:
            j += 1
        text, spans = token_spans(student_tokenizer, student_ids[i:j])
        enc = teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        where = _starts(teacher_tokenizer, enc["input_ids"], text, enc["offset_mapping"])
        for c, n in _starts(student_tokenizer, student_ids[i:j], text, spans).items():
            if c in where:
                index[i + n] = len(teacher_ids) + where[c]
        teacher_ids.extend(enc["input_ids"])
        i = j
    if most is not None and len(teacher_ids) > most:
        teacher_ids = teacher_ids[:most]
        index = [k if k < most else -1 for k in index]
    return teacher_ids, index


@functools.lru_cache(maxsize=16)
def _puts_bos(tokenizer: Any) -> bool:
    """Whether `tokenizer` starts the text it encodes with its BOS token (Llama's do)."""
    first = tokenizer("x")["input_ids"][:1]
    return bool(first) and first[0] == tokenizer.bos_token_id


def ranked_at(
    logits: torch.Tensor, positions: torch.Tensor, params: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The "ranked" group of a teacher of another tokenizer: `logits` (B, Tt, Vt) its
    next-token logits, `positions` (B, T) the teacher position aligned with each student
    position (-1: none). `teacher_ranked` (B, T, k), its top-k log-probabilities at the
    temperature there (0 where unaligned), and `teacher_aligned` (B, T)."""
    logp = topk_outputs(logits, params)["teacher_logprobs"]  # (B, Tt, k)
    aligned = positions >= 0
    picked = logp.gather(1, positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, logp.shape[-1]))  # (B, T, k)
    return {"teacher_ranked": torch.where(aligned.unsqueeze(-1), picked, 0.0), "teacher_aligned": aligned.to(torch.int8)}


def slice_teacher(student: torch.nn.Module, data: PreparedData, auto_class: str, init: Any, layer_pick: str) -> dict[str, Any]:
    """Overwrite `student` with its slice of the study's teacher (loaded with `auto_class`):
    `init(student, teacher, batch, layer_pick, scores=...)` of `search_spaces`, with the unit
    importance the study measured once on its calibration batch. Returns those scores.

    The teacher's weights are read from its safetensors files a tensor at a time, only those
    the student takes a slice of (`TeacherSource.weights`); a checkpoint that stores a weight
    under a name its model class does not give is loaded whole instead."""
    source = data.teacher_source
    scores = torch.load(data.path / "importance.pt", map_location="cpu", weights_only=True)
    try:
        init(student, source.weights(auto_class), None, layer_pick, scores=scores)
    except KeyError as exc:  # every weight is overwritten again from the loaded teacher
        logger.warning("slicing the student: %s; loading the whole teacher instead", exc.args[0])
        init(student, source.load_model(auto_class), None, layer_pick, scores=scores)
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


__all__ = [
    "LAYER_GROUPS",
    "LAYER_VALUES",
    "TopKLossParams",
    "check_positions",
    "check_space_fits",
    "align_to_teacher",
    "confidence_arrays",
    "layer_arrays",
    "layer_groups",
    "layer_outputs",
    "logit_outputs",
    "padded_rows",
    "ranked_arrays",
    "ranked_at",
    "slice_teacher",
    "stack_outputs",
    "student_layers",
    "topk_arrays",
    "token_spans",
    "topk_outputs",
    "trimmed",
]
