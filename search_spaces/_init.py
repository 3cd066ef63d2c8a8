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
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from search_spaces._weights import as_weights


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
    return _head_rows(context, _top(context.norm(dim=1), heads), head_dim)


def _head_rows(context: torch.Tensor, keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of Q/K/V to keep: the heads `keep`, the `head_dim` most important dimensions in each."""
    teacher_heads, teacher_dim = context.shape
    if head_dim > teacher_dim:
        raise ValueError(f"head_dim: {head_dim} exceeds the teacher's {teacher_dim}; init = teacher cannot widen heads")
    return torch.cat([h * teacher_dim + _top(context[h], head_dim) for h in keep.tolist()])


Roles = list[tuple[str, "tuple[str | None, ...] | None"]]


def _copy_slices(
    student: Any,
    teacher: Any,
    roles: Roles,
    layer_pattern: str,
    layers: dict[str, list[int]],
    hidden: torch.Tensor,
    per_layer: dict[str, list[dict[str, torch.Tensor]]],
    in_place: str | None = None,
) -> None:
    """Copy into every student weight its slice of the teacher's: layer i of a stack reads
    teacher layer layers[stack][i] (`layer_pattern` captures the stack's prefix and the layer
    index) and each axis is indexed by its role in `roles` (None: whole axis, "hidden": kept
    channels, else the layer's index set of that name). Roles None: the student keeps its own
    (sinusoidal positions at its width). Weights matching `in_place` are read from the same
    layer index of the teacher (T5's relative position buckets live in the first layer only)."""
    for name, param in student.named_parameters():
        axes = next(r for pattern, r in roles if re.search(pattern, name))
        if axes is None:
            continue
        match = re.search(layer_pattern, name)
        stack, i = (match.group(1), int(match.group(2))) if match else (None, None)
        source = name
        if match is not None and not (in_place and re.search(in_place, name)):
            source = name.replace(f"{stack}.{i}.", f"{stack}.{layers[stack][i]}.", 1)
        weight = teacher.param(source)  # a tied output layer answers with the input embedding
        for axis, role in enumerate(axes):
            if role is not None:
                index = hidden if role == "hidden" else per_layer[stack][i][role]
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
    weights = as_weights(teacher)
    s, t = student.config, weights.config
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
    stack = "encoder.layer"
    _copy_slices(student, weights, _BERT_ROLES, r"(encoder\.layer)\.(\d+)\.", {stack: layers}, hidden, {stack: per_layer})
    return layers


def _decoder_family(config: Any) -> str:
    """A causal LM's family for slicing: gpt2, or llama for Llama, Qwen2 and Mistral."""
    if config.model_type == "gpt2":
        return "gpt2"
    if config.model_type in ("llama", "qwen2", "mistral"):
        return "llama"
    raise ValueError(f"init = teacher: no slicing for {config.model_type!r} models")


def _decoder_layout(model: Any) -> tuple[list[Any], str]:
    """The blocks of a causal LM and its family (`_decoder_family`)."""
    family = _decoder_family(model.config)
    return list(model.transformer.h if family == "gpt2" else model.model.layers), family


@torch.no_grad()
def decoder_importance(teacher: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean |activation| on `batch`: per hidden channel (every norm's output), per attention
    context dimension (the output projection's input) and per FFN neuron (the down
    projection's input) of each layer of a GPT-2 or Llama-family teacher."""
    blocks, family = _decoder_layout(teacher)
    gpt2 = family == "gpt2"
    units = {
        "context": [b.attn.c_proj if gpt2 else b.self_attn.o_proj for b in blocks],
        "ffn": [b.mlp.c_proj if gpt2 else b.mlp.down_proj for b in blocks],
    }
    # A row at a time (rows of equal length: the mean of their means is the batch's), with no
    # next-token logits but the last position's: at a 151,936-token vocabulary those of 16
    # blocks of 128 tokens would take 0.6 GB, and importance reads none of them.
    rows = ({**{k: v[i : i + 1] for k, v in batch.items()}, "logits_to_keep": 1} for i in range(len(batch["input_ids"])))
    scores = activation_scores(teacher, rows, teacher.config.hidden_size, units)
    heads = teacher.config.n_head if gpt2 else teacher.config.num_attention_heads
    return {**scores, "context": [c.view(heads, -1) for c in scores["context"]]}


def activation_scores(
    model: Any, batches: Iterable[dict[str, torch.Tensor]], width: int, units: dict[str, list[Any]]
) -> dict[str, Any]:
    """Mean |activation| over the positions of each of `batches`, averaged over the batches:
    per hidden channel (summed over every norm's output, `hidden`), and per input unit of each
    module in `units` (role -> one module per layer: an output projection's input is its
    attention context, an FFN's down projection's input its neurons). The sums are kept in
    place: a batch leaves nothing behind for the next to work around."""
    hidden = torch.zeros(width)
    found: dict[str, dict[Any, torch.Tensor]] = {role: {} for role in units}
    hooks = []

    def mean_abs(x: Any) -> torch.Tensor:  # on the CPU, wherever the teacher runs
        x = x[0] if isinstance(x, tuple) else x
        return x.abs().float().flatten(0, -2).mean(0).cpu()

    def add_hidden(_m: Any, _i: Any, out: Any) -> None:  # returns None: the output is kept
        hidden.add_(mean_abs(out))

    def keep(role: str, layer: int) -> Any:
        def add(_m: Any, i: Any) -> None:
            if layer in found[role]:
                found[role][layer].add_(mean_abs(i))
            else:
                found[role][layer] = mean_abs(i)

        return add

    for _name, module in model.named_modules():
        if type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            hooks.append(module.register_forward_hook(add_hidden))
    for role, modules in units.items():
        hooks += [m.register_forward_pre_hook(keep(role, j)) for j, m in enumerate(modules)]
    n = 0
    try:
        model.eval()
        for batch in batches:
            model(**batch)
            n += 1
    finally:
        for h in hooks:
            h.remove()
    return {"hidden": hidden / n, **{role: [found[role][j] / n for j in range(len(units[role]))] for role in units}}


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
    weights = as_weights(teacher)
    if student.config.model_type != weights.config.model_type:
        raise ValueError(
            f"family: a {student.config.model_type} student cannot be sliced from a {weights.config.model_type} teacher"
        )
    family = _decoder_family(weights.config)
    s, t = student.config, weights.config
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
    stack = "transformer.h" if family == "gpt2" else "model.layers"
    _copy_slices(
        student, weights, _DECODER_ROLES[family], rf"({re.escape(stack)})\.(\d+)\.", {stack: layers}, hidden, {stack: per_layer}
    )
    return layers


# Encoder-decoder students: each stack (encoder, decoder) takes its own layers; "attn" are the
# self-attention rows kept, "cross" the decoder's attention over the encoder's, "heads" the
# heads kept (T5's relative position buckets are per head).
_SEQ2SEQ_ROLES: dict[str, Roles] = {
    "marian": [
        (r"embed_positions\.weight$", None),  # sinusoidal at the student's own width
        (r"(shared|embed_tokens)\.weight$|lm_head\.weight$", (None, "hidden")),
        (r"layer_norm\.(weight|bias)$", ("hidden",)),
        (r"self_attn\.(q|k|v)_proj\.weight$", ("attn", "hidden")),
        (r"self_attn\.(q|k|v)_proj\.bias$", ("attn",)),
        (r"self_attn\.out_proj\.weight$", ("hidden", "attn")),
        (r"encoder_attn\.(q|k|v)_proj\.weight$", ("cross", "hidden")),
        (r"encoder_attn\.(q|k|v)_proj\.bias$", ("cross",)),
        (r"encoder_attn\.out_proj\.weight$", ("hidden", "cross")),
        (r"fc1\.weight$", ("ffn", "hidden")),
        (r"fc1\.bias$", ("ffn",)),
        (r"fc2\.weight$", ("hidden", "ffn")),
        (r"(out_proj|fc2)\.bias$", ("hidden",)),
    ],
    "t5": [
        (r"(shared|embed_tokens)\.weight$|lm_head\.weight$", (None, "hidden")),
        (r"layer_norm\.weight$", ("hidden",)),
        (r"relative_attention_bias\.weight$", (None, "heads")),
        (r"SelfAttention\.(q|k|v)\.weight$", ("attn", "hidden")),
        (r"SelfAttention\.o\.weight$", ("hidden", "attn")),
        (r"EncDecAttention\.(q|k|v)\.weight$", ("cross", "hidden")),
        (r"EncDecAttention\.o\.weight$", ("hidden", "cross")),
        (r"DenseReluDense\.wi(_0|_1)?\.weight$", ("ffn", "hidden")),
        (r"DenseReluDense\.wo\.weight$", ("hidden", "ffn")),
    ],
}
_SEQ2SEQ_STACKS = {"marian": ("model.encoder.layers", "model.decoder.layers"), "t5": ("encoder.block", "decoder.block")}


def _seq2seq_units(model: Any) -> dict[str, dict[str, list[Any]]]:
    """Per stack, the modules whose inputs are each layer's attention context ("context"),
    cross-attention context ("cross", decoder) and FFN neurons ("ffn")."""
    family = model.config.model_type
    if family not in _SEQ2SEQ_ROLES:
        raise ValueError(f"init = teacher: no slicing for {family!r} models; allowed: {', '.join(_SEQ2SEQ_ROLES)}")
    encoder, decoder = _SEQ2SEQ_STACKS[family]
    if family == "marian":
        enc, dec = model.model.encoder.layers, model.model.decoder.layers
        return {
            encoder: {"context": [b.self_attn.out_proj for b in enc], "ffn": [b.fc2 for b in enc]},
            decoder: {
                "context": [b.self_attn.out_proj for b in dec],
                "cross": [b.encoder_attn.out_proj for b in dec],
                "ffn": [b.fc2 for b in dec],
            },
        }
    enc, dec = model.encoder.block, model.decoder.block
    return {
        encoder: {"context": [b.layer[0].SelfAttention.o for b in enc], "ffn": [b.layer[-1].DenseReluDense.wo for b in enc]},
        decoder: {
            "context": [b.layer[0].SelfAttention.o for b in dec],
            "cross": [b.layer[1].EncDecAttention.o for b in dec],
            "ffn": [b.layer[-1].DenseReluDense.wo for b in dec],
        },
    }


@torch.no_grad()
def seq2seq_importance(teacher: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean |activation| on a teacher-forced `batch` (input_ids, attention_mask,
    decoder_input_ids, decoder_attention_mask) of a Marian or T5 teacher: per hidden channel
    (every norm's output, both stacks), and per stack per layer the attention context
    (heads, head_dim), the decoder's cross-attention context, and the FFN neurons. Each pair
    is run alone at its own length, so padding counts for nothing; pairs weigh alike."""
    from search_spaces._seq2seq import teacher_shape

    shape = teacher_shape(teacher.config)
    units = _seq2seq_units(teacher)
    flat = {f"{stack}/{role}": modules for stack, roles in units.items() for role, modules in roles.items()}

    def pairs() -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(batch["input_ids"])):
            src, tgt = int(batch["attention_mask"][i].sum()), int(batch["decoder_attention_mask"][i].sum())
            yield {k: v[i : i + 1, : src if k in ("input_ids", "attention_mask") else tgt] for k, v in batch.items()}

    scores = activation_scores(teacher, pairs(), shape["hidden"], flat)
    per_head = ("context", "cross")
    return {
        "hidden": scores["hidden"],
        **{
            stack: {
                role: [s.view(shape["heads"], -1) if role in per_head else s for s in scores[f"{stack}/{role}"]]
                for role in roles
            }
            for stack, roles in units.items()
        },
    }


@torch.no_grad()
def init_seq2seq_from_teacher(
    student: Any,
    teacher: Any,
    batch: dict[str, torch.Tensor] | None,
    layer_pick: str,
    scores: dict[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Overwrite every weight of a Marian or T5 `student` with its slice of a teacher of the
    same family and head width: the encoder and the decoder each take `layer_pick` of their
    own layers; hidden channels, heads and FFN neurons are ranked by `seq2seq_importance`
    (measured on `batch` when `scores` are not given). Returns the teacher layers per stack."""
    from search_spaces._seq2seq import teacher_shape

    weights = as_weights(teacher)
    family = weights.config.model_type
    if student.config.model_type != family:
        raise ValueError(f"family: a {student.config.model_type} student cannot be sliced from a {family} teacher")
    s, t = teacher_shape(student.config), teacher_shape(weights.config)
    if s["head_dim"] != t["head_dim"]:
        raise ValueError(f"head_dim: init = teacher keeps the teacher's head width ({t['head_dim']}), got {s['head_dim']}")
    if any(s[k] > t[k] for k in ("hidden", "heads", "ffn")):
        raise ValueError("init = teacher: the student is wider than the teacher somewhere (hidden, heads or FFN)")
    scores = scores if scores is not None else seq2seq_importance(teacher, batch)
    encoder, decoder = _SEQ2SEQ_STACKS[family]
    layers = {
        encoder: pick_layers(t["encoder_layers"], s["encoder_layers"], layer_pick),
        decoder: pick_layers(t["decoder_layers"], s["decoder_layers"], layer_pick),
    }
    per_layer: dict[str, list[dict[str, torch.Tensor]]] = {}
    for stack, picked in layers.items():
        per_layer[stack] = []
        # T5 computes its relative position bias once, in a stack's first layer, and adds it to
        # the same head index of every layer: a T5 student keeps one set of self-attention
        # heads through a stack, the most important over the layers it takes.
        shared = _top(sum(scores[stack]["context"][j].norm(dim=1) for j in picked), s["heads"]) if family == "t5" else None
        for j in picked:
            context = scores[stack]["context"][j]
            heads = shared if shared is not None else _top(context.norm(dim=1), s["heads"])
            units = {
                "attn": _head_rows(context, heads, s["head_dim"]),
                "heads": heads,
                "ffn": _top(scores[stack]["ffn"][j], s["ffn"]),
            }
            if "cross" in scores[stack]:
                units["cross"] = _attention_index(scores[stack]["cross"][j], s["heads"], s["head_dim"])
            per_layer[stack].append(units)
    hidden = kept_channels(scores, s["hidden"])
    pattern = "(" + "|".join(re.escape(stack) for stack in layers) + r")\.(\d+)\."
    _copy_slices(
        student, weights, _SEQ2SEQ_ROLES[family], pattern, layers, hidden, per_layer, in_place="relative_attention_bias"
    )
    bias = weights.buffer("final_logits_bias")  # Marian's output bias (a buffer, e.g. banning <pad>)
    if bias is not None and getattr(student, "final_logits_bias", None) is not None:
        student.final_logits_bias.copy_(bias)
    return layers
