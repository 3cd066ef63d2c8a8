"""Decoder-only students: GPT-2 and the Llama family (Llama, Qwen2, Mistral share the fields).

An architecture is a plain dict of the values sampled by `sample` (JSON round-trips it);
`DecoderArch` validates and derives from that dict, and `build_model` turns it into a
Hugging Face model that keeps the teacher's vocabulary and special tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from search_spaces._common import WidthArch, multiple_of, sample_init, sample_width, widest

LLAMA_FAMILY = ("llama", "qwen2", "mistral")
INITS = ("random", "teacher")
LAYER_PICKS = ("even", "first", "every_other")
FAMILIES = ("gpt2", *LLAMA_FAMILY)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class DecoderSpace:
    """The bounds of the decoder-only search space (the `[space]` section of a study spec)."""

    families: tuple[str, ...] = ("gpt2", "llama")
    """model families to search; any of gpt2, llama, qwen2, mistral"""
    layers: tuple[int, int] = (1, 4)
    """[min, max] number of transformer blocks"""
    heads: tuple[int, ...] = (2, 4)
    """choices for the number of attention heads"""
    head_dim: tuple[int, ...] = (16, 32)
    """choices for the width of one head; hidden size = heads x head_dim, always valid"""
    gqa: bool = True
    """search the number of KV heads (a divisor of heads) for Llama-family students"""
    ffn_ratio: tuple[float, ...] = (2.0, 4.0)
    """choices for FFN size / hidden size"""
    tie_embeddings: tuple[bool, ...] = (True, False)
    """choices for sharing the input embedding with the output projection"""
    init: tuple[str, ...] = ("random",)
    """how students start: random, teacher (a slice of a teacher of the same family and head
    width; families and head_dim must then be the teacher's), or both"""
    layer_pick: tuple[str, ...] = ("even",)
    """which teacher layers a teacher-initialized student takes: even, first, every_other"""
    multiple_of: int | str = 1
    """widths a weight's rows run along (heads x head_dim, FFN size) as multiples of this, so
    that every student quantizes in an edge runtime without fallback: a number, or llama.cpp
    (256) or mlx (64); head counts and FFN sizes are rounded up (`search_spaces._common`)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiple_of", multiple_of(self.multiple_of))
        for name in ("families", "heads", "head_dim", "ffn_ratio", "tie_embeddings", "init", "layer_pick"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"{name}: needs at least one choice")
        object.__setattr__(self, "layers", tuple(self.layers))
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"families: unknown family {bad[0]!r}; allowed: {', '.join(FAMILIES)}")
        if len(self.layers) != 2 or not all(isinstance(v, int) for v in self.layers):
            raise ValueError(f"layers: must be [min, max] integers, got {list(self.layers)}")
        if not 1 <= self.layers[0] <= self.layers[1]:
            raise ValueError(f"layers: needs 1 <= min <= max, got {list(self.layers)}")
        for name in ("heads", "head_dim"):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ValueError(f"{name}: choices must be positive integers, got {list(values)}")
        if any(d % 2 for d in self.head_dim):
            raise ValueError(f"head_dim: choices must be even (rotary embeddings), got {list(self.head_dim)}")
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in self.ffn_ratio):
            raise ValueError(f"ffn_ratio: choices must be positive numbers, got {list(self.ffn_ratio)}")
        if not all(isinstance(t, bool) for t in self.tie_embeddings):
            raise ValueError(f"tie_embeddings: choices must be true/false, got {list(self.tie_embeddings)}")
        for name, allowed in (("init", INITS), ("layer_pick", LAYER_PICKS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ValueError(f"{name}: unknown choice {bad[0]!r}; allowed: {', '.join(allowed)}")

    def check_teacher(self, config: Any) -> None:
        """Raise ValueError("<key>: ...") when a student of this space cannot be built from the
        teacher of `config`: students sliced from the teacher have its family and head width
        and are no larger than it."""
        if "teacher" not in self.init:
            return
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if list(self.families) != [config.model_type] or list(self.head_dim) != [head_dim]:
            raise ValueError(
                f"init: students initialized from the teacher need families = [{config.model_type!r}] "
                f"and head_dim = [{head_dim}] (the teacher's); got {list(self.families)} and {list(self.head_dim)}"
            )
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
        heads, _, widest_ffn = widest(self)
        limits = (
            ("layers", max(self.layers), config.num_hidden_layers),
            ("heads", heads, config.num_attention_heads),
            ("ffn_ratio", max(self.ffn_ratio), ffn / config.hidden_size),
        )
        for key, asked, most in limits:
            if asked > most:
                raise ValueError(f"{key}: {asked} exceeds the teacher's {most:g}; students sliced from it cannot be larger")
        if widest_ffn > ffn:
            raise ValueError(f"multiple_of: an FFN rounded up to {widest_ffn} exceeds the teacher's {ffn}; students sliced from it cannot be larger")

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample one architecture: `suggest_*` calls only, returns the plain-dict architecture."""
        family = trial.suggest_categorical("family", list(self.families))
        layers = trial.suggest_int("layers", self.layers[0], self.layers[1])
        width = sample_width(trial, self)
        tie = trial.suggest_categorical("tie_embeddings", list(self.tie_embeddings))
        heads = width["heads"]
        kv_heads = heads
        if family in LLAMA_FAMILY and self.gqa:
            # One parameter name per head count keeps each distribution's choices fixed.
            kv_heads = trial.suggest_categorical(f"kv_heads_of_{heads}", _divisors(heads))
        return {
            "family": family,
            "layers": layers,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": width["head_dim"],
            "ffn_ratio": width["ffn_ratio"],
            "tie_embeddings": tie,
            **sample_init(trial, self),
            **{k: v for k, v in width.items() if k == "multiple_of"},
        }


@dataclasses.dataclass(frozen=True)
class DecoderArch(WidthArch):
    """A decoder-only student; valid by construction (hidden = heads x head_dim, kv | heads)."""

    family: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_ratio: float
    tie_embeddings: bool
    init: str = "random"
    layer_pick: str = "even"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        self.check_multiple()
        if self.init not in INITS or self.layer_pick not in LAYER_PICKS:
            raise ValueError(f"init/layer_pick: allowed {', '.join(INITS)} / {', '.join(LAYER_PICKS)}")
        if self.family not in FAMILIES:
            raise ValueError(f"family: unknown {self.family!r}; allowed: {', '.join(FAMILIES)}")
        if min(self.layers, self.heads, self.kv_heads, self.head_dim) < 1:
            raise ValueError("layers, heads, kv_heads and head_dim must be positive")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if self.family == "gpt2" and self.kv_heads != self.heads:
            raise ValueError("gpt2 students have no grouped-query attention: kv_heads must equal heads")

    def short(self) -> str:
        """One-line summary, e.g. `llama L3 d128 h4/kv2 ffn512 tied`."""
        kv = f"/kv{self.kv_heads}" if self.kv_heads != self.heads else ""
        tie = "tied" if self.tie_embeddings else "untied"
        init = f" init=teacher/{self.layer_pick}" if self.init == "teacher" else ""
        return f"{self.family} L{self.layers} d{self.hidden} h{self.heads}{kv} ffn{self.ffn} {tie}{init}"

    def param_counts(self, vocab_size: int, max_positions: int) -> dict[str, int]:
        """Parameter counts derived from the architecture (must match the built model)."""
        d, f, layers = self.hidden, self.ffn, self.layers
        kv = self.kv_heads * self.head_dim
        embedding = vocab_size * d
        if self.family == "gpt2":
            position = max_positions * d
            block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
            body = layers * block + 2 * d
        else:
            position = 0
            attn = d * d + 2 * d * kv + d * d + (d + 2 * kv if self.family == "qwen2" else 0)
            body = layers * (attn + 3 * d * f + 2 * d) + d
        head = 0 if self.tie_embeddings else vocab_size * d
        total = embedding + position + body + head
        return {"params": total, "non_embedding_params": body}


def build_config(arch: DecoderArch, teacher_config: Any, max_positions: int) -> Any:
    """The Hugging Face config of a student that shares the teacher's vocabulary and tokens."""
    from transformers import AutoConfig

    tokens = {name: getattr(teacher_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vocab = teacher_config.vocab_size
    if arch.family == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab,
            n_positions=max_positions,
            n_embd=arch.hidden,
            n_layer=arch.layers,
            n_head=arch.heads,
            n_inner=arch.ffn,
            tie_word_embeddings=arch.tie_embeddings,
            **tokens,
        )
    return AutoConfig.for_model(
        arch.family,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        intermediate_size=arch.ffn,
        tie_word_embeddings=arch.tie_embeddings,
        **tokens,
    )


def build_model(arch: DecoderArch, teacher_config: Any, max_positions: int) -> Any:
    """A freshly initialized `AutoModelForCausalLM` for the architecture."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(build_config(arch, teacher_config, max_positions))
