"""Encoder students (BERT family) for sentence-embedding teachers.

Like the decoder space: sampling is `suggest_*` calls only and returns a plain dict; the
architecture validates in `__post_init__`; the student keeps the teacher's tokenizer,
vocabulary and position range. `init` says whether the student starts from random weights or
from a slice of the teacher (see `search_spaces._init`), and `layer_pick` which teacher layers
a teacher-initialized student takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from search_spaces._common import WidthArch, multiple_of, sample_init, sample_width, widest

INITS = ("random", "teacher")
LAYER_PICKS = ("even", "first", "every_other")


@dataclasses.dataclass(frozen=True)
class EncoderSpace:
    """The bounds of the encoder search space (the `[space]` section of an embedding study)."""

    layers: tuple[int, int] = (1, 4)
    """[min, max] number of transformer layers"""
    heads: tuple[int, ...] = (4, 6, 8, 12)
    """choices for the number of attention heads"""
    head_dim: tuple[int, ...] = (32,)
    """choices for the width of one head; hidden size = heads x head_dim, always valid"""
    ffn_ratio: tuple[float, ...] = (2.0, 4.0)
    """choices for FFN size / hidden size"""
    init: tuple[str, ...] = ("teacher",)
    """how students start: random, teacher (a slice of the teacher's weights), or both"""
    layer_pick: tuple[str, ...] = ("even",)
    """which teacher layers a teacher-initialized student takes: even, first, every_other"""
    multiple_of: int | str = 1
    """widths a weight's rows run along (heads x head_dim, FFN size) as multiples of this, so
    that every student quantizes in an edge runtime without fallback: a number, or llama.cpp
    (256) or mlx (64); head counts and FFN sizes are rounded up (`search_spaces._common`)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiple_of", multiple_of(self.multiple_of))
        for name in ("heads", "head_dim", "ffn_ratio", "init", "layer_pick"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"{name}: needs at least one choice")
        object.__setattr__(self, "layers", tuple(self.layers))
        if (
            len(self.layers) != 2
            or not all(isinstance(v, int) for v in self.layers)
            or not 1 <= self.layers[0] <= self.layers[1]
        ):
            raise ValueError(f"layers: must be [min, max] integers with 1 <= min <= max, got {list(self.layers)}")
        for name in ("heads", "head_dim"):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ValueError(f"{name}: choices must be positive integers, got {list(values)}")
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in self.ffn_ratio):
            raise ValueError(f"ffn_ratio: choices must be positive numbers, got {list(self.ffn_ratio)}")
        for name, allowed in (("init", INITS), ("layer_pick", LAYER_PICKS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ValueError(f"{name}: unknown choice {bad[0]!r}; allowed: {', '.join(allowed)}")

    def check_teacher(self, config: Any) -> None:
        """Raise ValueError("<key>: ...") when a student of this space cannot be built from the
        BERT teacher of `config`: students sliced from it (init = teacher) take a subset of its
        layers, heads, head dimensions, hidden channels and FFN neurons."""
        if "teacher" not in self.init:
            return
        head_dim = config.hidden_size // config.num_attention_heads
        heads, width, ffn = widest(self)  # rounded where multiple_of asks
        limits = (
            ("layers", "depth", max(self.layers), config.num_hidden_layers),
            ("heads", "head count", heads, config.num_attention_heads),
            ("head_dim", "head width", max(self.head_dim), head_dim),
            ("heads", "width (heads x head_dim)", width, config.hidden_size),
            ("ffn_ratio", "FFN width", ffn, config.intermediate_size),
        )
        for key, what, asked, most in limits:
            if asked > most:
                raise ValueError(
                    f"{key}: a student {what} of {asked} exceeds the teacher's {most}; "
                    "students initialized from the teacher cannot be larger"
                )

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample one architecture: `suggest_*` calls only, returns the plain-dict architecture."""
        init = sample_init(trial, self)  # first, as stored studies sampled it
        return {
            "family": "bert",
            "layers": trial.suggest_int("layers", self.layers[0], self.layers[1]),
            **sample_width(trial, self),
            **init,
        }


@dataclasses.dataclass(frozen=True)
class EncoderArch(WidthArch):
    """A BERT-family student; hidden = heads x head_dim, valid by construction."""

    family: str
    layers: int
    heads: int
    head_dim: int
    ffn_ratio: float
    init: str = "random"
    layer_pick: str = "even"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        self.check_multiple()
        if self.family != "bert":
            raise ValueError(f"family: encoder students are bert, got {self.family!r}")
        if min(self.layers, self.heads, self.head_dim) < 1:
            raise ValueError("layers, heads and head_dim must be positive")
        if self.init not in INITS:
            raise ValueError(f"init: unknown {self.init!r}; allowed: {', '.join(INITS)}")
        if self.layer_pick not in LAYER_PICKS:
            raise ValueError(f"layer_pick: unknown {self.layer_pick!r}; allowed: {', '.join(LAYER_PICKS)}")

    def short(self) -> str:
        """One-line summary, e.g. `bert L3 d192 h6 ffn768 init=teacher/even`."""
        init = f"init=teacher/{self.layer_pick}" if self.init == "teacher" else "init=random"
        return f"bert L{self.layers} d{self.hidden} h{self.heads} ffn{self.ffn} {init}"

    def param_counts(self, vocab_size: int, max_positions: int, type_vocab_size: int = 2) -> dict[str, int]:
        """Parameter counts derived from the architecture (must match the built model)."""
        d, f = self.hidden, self.ffn
        embedding = (vocab_size + max_positions + type_vocab_size) * d
        layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
        body = 2 * d + self.layers * layer + (d * d + d)  # embedding LayerNorm, layers, pooler
        return {"params": embedding + body, "non_embedding_params": body}


def build_encoder_config(arch: EncoderArch, teacher_config: Any) -> Any:
    """A BERT config sharing the teacher's vocabulary, position range and special tokens."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "bert",
        vocab_size=teacher_config.vocab_size,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=getattr(teacher_config, "type_vocab_size", 2),
        pad_token_id=teacher_config.pad_token_id,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        intermediate_size=arch.ffn,
        hidden_act=getattr(teacher_config, "hidden_act", "gelu"),
        layer_norm_eps=getattr(teacher_config, "layer_norm_eps", 1e-12),
    )


def build_encoder(arch: EncoderArch, teacher_config: Any) -> Any:
    """A freshly initialized `AutoModel` (BertModel with its pooler) for the architecture."""
    from transformers import AutoModel

    return AutoModel.from_config(build_encoder_config(arch, teacher_config))
