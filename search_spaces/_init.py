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


def layer_map(student_layers: int, teacher_layers: int, pick: str = "even") -> list[int]:
    """The teacher hidden state each student hidden state is matched to, embedding output
    first: embeddings to embeddings, then each student layer to the teacher layer `pick` takes
    for it (the one a teacher-initialized student was sliced from); a student deeper than its
    teacher spreads its layers evenly over the teacher's."""
    if student_layers > teacher_layers:
        return [0] + [round((j + 1) * teacher_layers / student_layers) for j in range(student_layers)]
    return [0] + [p + 1 for p in pick_layers(teacher_layers, student_layers, pick)]


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

    def mean_abs(out: Any) -> torch.Tensor:  # on the CPU, wherever the teacher runs
        out = out[0] if isinstance(out, tuple) else out  # (B, T, C)
        return ((out.abs().float() * mask).sum((0, 1)) / n).cpu()

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


def _copy_slices(
    student: Any,
    teacher: Any,
    roles: list[tuple[str, tuple[str | None, ...]]],
    layer_pattern: str,
    layers: list[int],
    hidden: torch.Tensor,
    per_layer: list[dict[str, torch.Tensor]],
) -> None:
    """Copy into every student weight its slice of the teacher's: student layer i reads teacher
    layer layers[i] (`layer_pattern` captures the layer prefix and index), and each axis is
    indexed by its role in `roles` (None: whole axis, "hidden": kept channels, else the layer's
    index set of that name)."""
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        match = re.search(layer_pattern, name)
        i = int(match.group(2)) if match else None
        source = name if match is None else name.replace(f"{match.group(1)}.{i}.", f"{match.group(1)}.{layers[i]}.", 1)
        axes = next(r for pattern, r in roles if re.search(pattern, name))
        # a tied output layer is not a parameter of its own: it is the output embedding
        weight = teacher_params[source] if source in teacher_params else teacher.get_output_embeddings().weight
        for axis, role in enumerate(axes):
            if role is not None:
                index = hidden if role == "hidden" else per_layer[i][role]
                weight = weight.index_select(axis, index.to(weight.device))
        param.copy_(weight)


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
    per_layer = [
        {
            "attn": _attention_index(scores["context"][j], s.num_attention_heads, head_dim),
            "ffn": _top(scores["ffn"][j], s.intermediate_size),
        }
        for j in layers
    ]
    _copy_slices(student, teacher, _BERT_ROLES, r"(encoder\.layer)\.(\d+)\.", layers, hidden, per_layer)
    return layers


def _decoder_layout(model: Any) -> tuple[list[Any], str]:
    """The blocks of a causal LM and its family: gpt2, or llama for Llama, Qwen2 and Mistral."""
    if model.config.model_type == "gpt2":
        return list(model.transformer.h), "gpt2"
    if model.config.model_type in ("llama", "qwen2", "mistral"):
        return list(model.model.layers), "llama"
    raise ValueError(f"init = teacher: no slicing for {model.config.model_type!r} models")


@torch.no_grad()
def decoder_importance(teacher: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean |activation| on `batch`: per hidden channel (every norm's output), per attention
    context dimension (the output projection's input) and per FFN neuron (the down
    projection's input) of each layer of a GPT-2 or Llama-family teacher."""
    blocks, family = _decoder_layout(teacher)
    hidden = torch.zeros(teacher.config.hidden_size)
    context: list[torch.Tensor] = []
    ffn: list[torch.Tensor] = []
    hooks = []

    def mean_abs(x: Any) -> torch.Tensor:  # on the CPU, wherever the teacher runs
        x = x[0] if isinstance(x, tuple) else x
        return x.abs().float().flatten(0, -2).mean(0).cpu()

    def add_hidden(_m: Any, _i: Any, out: Any) -> None:  # returns None: the output is kept
        hidden.add_(mean_abs(out))

    for _name, module in teacher.named_modules():
        if type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            hooks.append(module.register_forward_hook(add_hidden))
    for block in blocks:
        attn_out = block.attn.c_proj if family == "gpt2" else block.self_attn.o_proj
        ffn_out = block.mlp.c_proj if family == "gpt2" else block.mlp.down_proj
        hooks.append(attn_out.register_forward_pre_hook(lambda _m, i: context.append(mean_abs(i))))
        hooks.append(ffn_out.register_forward_pre_hook(lambda _m, i: ffn.append(mean_abs(i))))
    try:
        teacher.eval()(**batch)
    finally:
        for h in hooks:
            h.remove()
    heads = teacher.config.num_attention_heads if family == "llama" else teacher.config.n_head
    return {"hidden": hidden, "context": [c.view(heads, -1) for c in context], "ffn": ffn}


def _gqa_index(context: torch.Tensor, kv_teacher: int, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q rows and K/V rows to keep: the most important KV groups, then the most important
    query heads inside each kept group (a query head keeps its own KV head)."""
    teacher_heads, dim = context.shape
    group_t, group_s = teacher_heads // kv_teacher, heads // kv_heads
    norms = context.norm(dim=1)  # (teacher heads,)

    def rows(hs: torch.Tensor) -> torch.Tensor:
        return torch.cat([h * dim + torch.arange(dim) for h in hs.tolist()])

    if kv_heads <= kv_teacher and group_s <= group_t:  # the teacher's grouping can be kept
        by_group = norms.view(kv_teacher, group_t)
        groups = _top(by_group.sum(1), kv_heads)
        q_heads = torch.cat([g * group_t + _top(by_group[g], group_s) for g in groups.tolist()])
        return rows(q_heads), rows(groups)
    # Regrouped: the most important query heads, in order; each student KV head copies the
    # teacher KV head of the first query head of its group.
    q_heads = _top(norms, heads)
    kv_of = torch.tensor([q_heads[i * group_s].item() // group_t for i in range(kv_heads)])
    return rows(q_heads), rows(kv_of)


_DECODER_ROLES = {
    "gpt2": [
        (r"(wte|wpe)\.weight$|lm_head\.weight$", (None, "hidden")),
        (r"ln_(1|2|f)\.(weight|bias)$", ("hidden",)),
        (r"attn\.c_attn\.weight$", ("hidden", "qkv")),
        (r"attn\.c_attn\.bias$", ("qkv",)),
        (r"attn\.c_proj\.weight$", ("q", "hidden")),
        (r"mlp\.c_fc\.weight$", ("hidden", "ffn")),
        (r"mlp\.c_fc\.bias$", ("ffn",)),
        (r"mlp\.c_proj\.weight$", ("ffn", "hidden")),
        (r"(attn|mlp)\.c_proj\.bias$", ("hidden",)),
    ],
    "llama": [
        (r"embed_tokens\.weight$|lm_head\.weight$", (None, "hidden")),
        (r"norm\.weight$", ("hidden",)),
        (r"q_proj\.weight$", ("q", "hidden")),
        (r"q_proj\.bias$", ("q",)),
        (r"(k|v)_proj\.weight$", ("kv", "hidden")),
        (r"(k|v)_proj\.bias$", ("kv",)),
        (r"o_proj\.weight$", ("hidden", "q")),
        (r"(gate|up)_proj\.weight$", ("ffn", "hidden")),
        (r"down_proj\.weight$", ("hidden", "ffn")),
    ],
}


@torch.no_grad()
def init_decoder_from_teacher(
    student: Any,
    teacher: Any,
    batch: dict[str, torch.Tensor] | None,
    layer_pick: str,
    scores: dict[str, Any] | None = None,
) -> list[int]:
    """Overwrite every weight of a GPT-2 or Llama-family `student` with its slice of a teacher
    of the same family and head width; returns the teacher layers taken."""
    if student.config.model_type != teacher.config.model_type:
        raise ValueError(
            f"family: a {student.config.model_type} student cannot be sliced from a {teacher.config.model_type} teacher"
        )
    _, family = _decoder_layout(teacher)
    s, t = student.config, teacher.config
    if family == "gpt2":
        n_layers, heads, kv, width = (t.n_layer, t.n_head, t.n_head, t.n_embd)
        s_layers, s_heads, s_kv, s_width = (s.n_layer, s.n_head, s.n_head, s.n_embd)
        s_ffn = s.n_inner or 4 * s.n_embd
    else:
        n_layers, heads, kv, width = (t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.hidden_size)
        s_layers, s_heads, s_kv, s_width = (
            s.num_hidden_layers,
            s.num_attention_heads,
            s.num_key_value_heads,
            s.hidden_size,
        )
        s_ffn = s.intermediate_size
    t_dim = getattr(t, "head_dim", None) or width // heads
    s_dim = getattr(s, "head_dim", None) or s_width // s_heads
    if s_dim != t_dim:
        raise ValueError(f"head_dim: init = teacher keeps the teacher's head width ({t_dim}), got {s_dim}")
    layers = pick_layers(n_layers, s_layers, layer_pick)
    scores = scores if scores is not None else decoder_importance(teacher, batch)
    hidden = kept_channels(scores, s_width)
    per_layer = []
    for j in layers:
        q, kv_rows = _gqa_index(scores["context"][j], kv, s_heads, s_kv)
        ffn = _top(scores["ffn"][j], s_ffn)
        qkv = torch.cat([q, heads * t_dim + q, 2 * heads * t_dim + q]) if family == "gpt2" else None
        per_layer.append({"q": q, "kv": kv_rows, "ffn": ffn, "qkv": qkv})
    _copy_slices(
        student, teacher, _DECODER_ROLES[family], r"(transformer\.h|model\.layers)\.(\d+)\.", layers, hidden, per_layer
    )
    return layers
