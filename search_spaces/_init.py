"""Students initialized from the teacher's weights (Minitron-style pruning as initialization).

Depth: the student takes a subset of the teacher's layers (`pick_layers`). Width: hidden
channels, attention heads (and dimensions within a head) and FFN neurons are ranked by their
mean activation magnitude on a calibration batch (Muralidharan et al., 2024, "Compact
Language Models via Pruning and Knowledge Distillation"), the most important ones are kept in
their original order, and every weight is sliced accordingly. A student with the teacher's
architecture gets the teacher's weights unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import torch


def pick_layers(teacher_layers: int, student_layers: int, how: str) -> list[int]:
    """Which teacher layers a student of `student_layers` takes (ascending)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"layers: a student of {student_layers} layers cannot take them from a {teacher_layers}-layer teacher"
        )
    if how == "first":
        return list(range(student_layers))
    if how == "every_other":
        picked = list(range(1, teacher_layers, 2))[:student_layers]  # 1, 3, 5, ...
        rest = [i for i in range(teacher_layers) if i not in picked]
        return sorted(picked + rest[: student_layers - len(picked)])
    if how == "even":  # evenly spaced, always including the last layer
        if student_layers == 1:
            return [teacher_layers - 1]
        step = (teacher_layers - 1) / (student_layers - 1)
        return sorted({round(i * step) for i in range(student_layers)})
    raise ValueError(f"layer_pick: unknown {how!r}; allowed: even, first, every_other")


@torch.no_grad()
def bert_importance(teacher: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean |activation| over the real tokens of `batch`: per hidden channel (summed over every
    LayerNorm output), per attention context dimension and per FFN neuron of each layer."""
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    n = mask.sum()
    hidden = torch.zeros(teacher.config.hidden_size)
    context: list[torch.Tensor] = []
    ffn: list[torch.Tensor] = []
    hooks = []

    def mean_abs(out: Any) -> torch.Tensor:
        out = out[0] if isinstance(out, tuple) else out  # (B, T, C)
        return (out.abs().float() * mask).sum((0, 1)) / n

    def add_hidden(_m: Any, _i: Any, out: Any) -> None:
        hidden.add_(mean_abs(out))

    for name, module in teacher.named_modules():
        if name.endswith("LayerNorm"):
            hooks.append(module.register_forward_hook(add_hidden))
    for layer in teacher.encoder.layer:
        hooks.append(layer.attention.self.register_forward_hook(lambda _m, _i, o: context.append(mean_abs(o))))
        hooks.append(layer.intermediate.register_forward_hook(lambda _m, _i, o: ffn.append(mean_abs(o))))
    try:
        teacher.eval()(**batch)
    finally:
        for h in hooks:
            h.remove()
    heads = teacher.config.num_attention_heads
    return {
        "hidden": hidden,
        "context": [c.view(heads, -1) for c in context],  # (heads, head_dim) per layer
        "ffn": ffn,  # (F,) per layer
    }


def kept_channels(scores: dict[str, Any], width: int) -> torch.Tensor:
    """The hidden channels a student of `width` keeps (ascending)."""
    return _top(scores["hidden"], width)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (keeps the original order)."""
    if k > scores.numel():
        raise ValueError(f"cannot keep {k} of {scores.numel()} units")
    return scores.topk(k).indices.sort().values


def _attention_index(context: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rows of Q/K/V to keep: the `heads` most important heads, `head_dim` dimensions in each."""
    teacher_heads, teacher_dim = context.shape
    if head_dim > teacher_dim:
        raise ValueError(f"head_dim: {head_dim} exceeds the teacher's {teacher_dim}; init = teacher cannot widen heads")
    keep = _top(context.norm(dim=1), heads)
    return torch.cat([h * teacher_dim + _top(context[h], head_dim) for h in keep.tolist()])


# (pattern, roles of the weight's axes); "attn" and "ffn" are per layer, "hidden" global.
_BERT_ROLES = [
    (r"embeddings\.(word|position|token_type)_embeddings\.weight$", (None, "hidden")),
    (r"LayerNorm\.(weight|bias)$", ("hidden",)),
    (r"attention\.self\.(query|key|value)\.weight$", ("attn", "hidden")),
    (r"attention\.self\.(query|key|value)\.bias$", ("attn",)),
    (r"attention\.output\.dense\.weight$", ("hidden", "attn")),
    (r"intermediate\.dense\.weight$", ("ffn", "hidden")),
    (r"intermediate\.dense\.bias$", ("ffn",)),
    (r"layer\.\d+\.output\.dense\.weight$", ("hidden", "ffn")),
    (r"(attention\.output|layer\.\d+\.output)\.dense\.bias$", ("hidden",)),
    (r"pooler\.dense\.weight$", ("hidden", "hidden")),
    (r"pooler\.dense\.bias$", ("hidden",)),
]


@torch.no_grad()
def init_bert_from_teacher(
    student: Any,
    teacher: Any,
    batch: dict[str, torch.Tensor] | None,
    layer_pick: str,
    scores: dict[str, Any] | None = None,
) -> list[int]:
    """Overwrite every weight of the BERT `student` with its slice of `teacher`'s; returns the
    teacher layers taken. The importance `scores` come from `bert_importance` on a calibration
    batch, measured here from `batch` (input_ids, attention_mask) when not given."""
    s, t = student.config, teacher.config
    head_dim = s.hidden_size // s.num_attention_heads
    layers = pick_layers(t.num_hidden_layers, s.num_hidden_layers, layer_pick)
    if (
        s.hidden_size > t.hidden_size
        or s.intermediate_size > t.intermediate_size
        or s.num_attention_heads > t.num_attention_heads
    ):
        raise ValueError("init = teacher: the student is wider than the teacher somewhere (hidden, heads or FFN)")
    scores = scores if scores is not None else bert_importance(teacher, batch)
    hidden = kept_channels(scores, s.hidden_size)
    attn = [_attention_index(scores["context"][j], s.num_attention_heads, head_dim) for j in layers]
    ffn = [_top(scores["ffn"][j], s.intermediate_size) for j in layers]
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        match = re.search(r"encoder\.layer\.(\d+)\.", name)
        i = int(match.group(1)) if match else None
        source = name if i is None else name.replace(f"encoder.layer.{i}.", f"encoder.layer.{layers[i]}.", 1)
        roles = next(r for pattern, r in _BERT_ROLES if re.search(pattern, name))
        weight = teacher_params[source]
        for axis, role in enumerate(roles):
            if role is not None:
                index = {
                    "hidden": hidden,
                    "attn": attn[i] if i is not None else None,
                    "ffn": ffn[i] if i is not None else None,
                }[role]
                weight = weight.index_select(axis, index.to(weight.device))
        param.copy_(weight)
    return layers
