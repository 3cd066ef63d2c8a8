"""Encoder-decoder students for translation teachers: Marian-style (post-norm, biases,
sinusoidal positions) and T5-style (pre-RMS-norm, no biases, relative position buckets)
through one interface.

Encoder and decoder depth are searched separately: a deep encoder with a shallow decoder is
where generation latency is won at little cost in quality (Kasai et al., "Deep Encoder,
Shallow Decoder", ICLR 2021), since the decoder runs once per generated token and the encoder
once per sentence. Width is heads x head_dim, as in the other spaces; the student keeps the
teacher's tokenizer, vocabulary and special tokens whatever the teacher's family.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from search_spaces._common import (
    WidthArch,
    as_choices,
    check_allowed,
    check_bools,
    check_positive_ints,
    check_positive_numbers,
    check_range,
    multiple_of,
    sample_init,
    sample_width,
    widest,
)

SEQ2SEQ_FAMILIES = ("marian", "t5")
INITS = ("random", "teacher")
LAYER_PICKS = ("even", "first", "every_other")


@dataclasses.dataclass(frozen=True)
class Seq2SeqSpace:
    """The bounds of the encoder-decoder search space (the `[space]` section of a translation study)."""

    families: tuple[str, ...] = ("marian",)
    """student families to search; any of marian, t5"""
    encoder_layers: tuple[int, int] = (1, 4)
    """[min, max] encoder layers"""
    decoder_layers: tuple[int, int] = (1, 2)
    """[min, max] decoder layers; a T5 student has at most as many as encoder layers (its
    generation cache in transformers 5 is sized by the encoder's depth)"""
    heads: tuple[int, ...] = (2, 4)
    """choices for the number of attention heads (encoder and decoder alike)"""
    head_dim: tuple[int, ...] = (16, 32)
    """choices for the width of one head; hidden size = heads x head_dim, always valid"""
    ffn_ratio: tuple[float, ...] = (2.0, 4.0)
    """choices for FFN size / hidden size"""
    share_embeddings: tuple[bool, ...] = (True, False)
    """choices for one embedding shared by source, target and output projection (true), or a
    source embedding apart from the target's, which the output projection shares (false).
    Marian students only: T5 students always share (transformers ties T5's embeddings)"""
    init: tuple[str, ...] = ("random",)
    """how students start: random, teacher (a slice of a teacher of the same family and head
    width), or both"""
    layer_pick: tuple[str, ...] = ("even",)
    """which teacher layers (of the encoder and of the decoder) a teacher-initialized student
    takes: even, first, every_other"""
    multiple_of: int | str = 1
    """widths a weight's rows run along (heads x head_dim, FFN size) as multiples of this, so
    that every student quantizes in an edge runtime without fallback: a number, or llama.cpp
    (256) or mlx (64); head counts and FFN sizes are rounded up (`search_spaces._common`)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiple_of", multiple_of(self.multiple_of))
        as_choices(self, ("families", "heads", "head_dim", "ffn_ratio", "share_embeddings", "init", "layer_pick"))
        for name in ("encoder_layers", "decoder_layers"):
            object.__setattr__(self, name, check_range(name, getattr(self, name)))
        check_allowed("families", self.families, SEQ2SEQ_FAMILIES)
        check_positive_ints("heads", self.heads)
        check_positive_ints("head_dim", self.head_dim)
        check_positive_numbers("ffn_ratio", self.ffn_ratio)
        check_bools("share_embeddings", self.share_embeddings)
        check_allowed("init", self.init, INITS)
        check_allowed("layer_pick", self.layer_pick, LAYER_PICKS)

    def check_teacher(self, config: Any) -> None:
        """Raise ValueError("<key>: ...") when a student of this space cannot be built from the
        teacher of `config`: any encoder-decoder teacher gives random students its vocabulary;
        students sliced from it (init = teacher) have its family and head width and are no
        larger than it."""
        if not getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"families: a translation student needs an encoder-decoder teacher "
                f"(AutoModelForSeq2SeqLM: Marian, T5, BART, ...); got model_type {config.model_type!r}"
            )
        if target_vocab(config) != config.vocab_size and (self.families != ("marian",) or True in self.share_embeddings):
            raise ValueError(
                f"share_embeddings: the teacher has a target vocabulary of its own ({target_vocab(config)} tokens, "
                f"source {config.vocab_size}); its students need families = [\"marian\"] and share_embeddings = [false]"
            )
        if "teacher" not in self.init:
            return
        if config.model_type not in SEQ2SEQ_FAMILIES:
            raise ValueError(
                f"init: students are sliced from Marian or T5 teachers only; a {config.model_type!r} teacher "
                f"teaches students that start from random weights (init = [\"random\"])"
            )
        if config.model_type == "marian" and not getattr(config, "tie_word_embeddings", True):
            raise ValueError(
                "init: a Marian teacher with an output layer of its own (tie_word_embeddings = false) is not sliced: "
                "its students tie theirs; use init = [\"random\"]"
            )
        shape = teacher_shape(config)
        if list(self.families) != [config.model_type] or list(self.head_dim) != [shape["head_dim"]]:
            raise ValueError(
                f"init: students initialized from the teacher need families = [{config.model_type!r}] "
                f"and head_dim = [{shape['head_dim']}] (the teacher's); got {list(self.families)} and {list(self.head_dim)}"
            )
        heads, _, ffn = widest(self)
        limits = (
            ("encoder_layers", max(self.encoder_layers), shape["encoder_layers"]),
            ("decoder_layers", max(self.decoder_layers), shape["decoder_layers"]),
            ("heads", heads, shape["heads"]),
            ("ffn_ratio", max(self.ffn_ratio), shape["ffn"] / shape["hidden"]),
        )
        for key, asked, most in limits:
            if asked > most:
                raise ValueError(f"{key}: {asked} exceeds the teacher's {most:g}; students sliced from it cannot be larger")
        if ffn > shape["ffn"]:
            raise ValueError(f"multiple_of: an FFN rounded up to {ffn} exceeds the teacher's {shape['ffn']}; students sliced from it cannot be larger")

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample one architecture: `suggest_*` calls only, returns the plain-dict architecture."""
        family = trial.suggest_categorical("family", list(self.families))
        encoder_layers = trial.suggest_int("encoder_layers", *self.encoder_layers)
        if family == "t5":  # one parameter name per encoder depth keeps each distribution fixed
            lo, hi = (min(v, encoder_layers) for v in self.decoder_layers)
            decoder_layers = trial.suggest_int(f"t5_decoder_layers_of_{encoder_layers}", lo, hi)
        else:
            decoder_layers = trial.suggest_int("decoder_layers", *self.decoder_layers)
        width = sample_width(trial, self)
        share = trial.suggest_categorical("share_embeddings", list(self.share_embeddings)) if family == "marian" else True
        return {
            "family": family,
            "encoder_layers": encoder_layers,
            "decoder_layers": decoder_layers,
            **width,
            "share_embeddings": share,
            **sample_init(trial, self),
        }


def target_vocab(config: Any) -> int:
    """The size of the vocabulary a model generates from: Marian models may have a target
    vocabulary apart from the source's (`decoder_vocab_size`)."""
    return getattr(config, "decoder_vocab_size", None) or config.vocab_size


def teacher_shape(config: Any) -> dict[str, int]:
    """Depths and widths of a Marian/BART-style or T5-style encoder-decoder config."""
    if config.model_type in ("t5", "mt5", "umt5"):
        return {
            "encoder_layers": config.num_layers,
            "decoder_layers": config.num_decoder_layers,
            "heads": config.num_heads,
            "head_dim": config.d_kv,
            "hidden": config.d_model,
            "ffn": config.d_ff,
        }
    heads = config.encoder_attention_heads
    return {
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "heads": heads,
        "head_dim": config.d_model // heads,
        "hidden": config.d_model,
        "ffn": config.encoder_ffn_dim,
    }


@dataclasses.dataclass(frozen=True)
class Seq2SeqArch(WidthArch):
    """An encoder-decoder student; valid by construction (hidden = heads x head_dim)."""

    family: str
    encoder_layers: int
    decoder_layers: int
    heads: int
    head_dim: int
    ffn_ratio: float
    share_embeddings: bool
    init: str = "random"
    layer_pick: str = "even"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        self.check_multiple()
        if self.family not in SEQ2SEQ_FAMILIES:
            raise ValueError(f"family: unknown {self.family!r}; allowed: {', '.join(SEQ2SEQ_FAMILIES)}")
        if min(self.encoder_layers, self.decoder_layers, self.heads, self.head_dim) < 1:
            raise ValueError("encoder_layers, decoder_layers, heads and head_dim must be positive")
        if self.init not in INITS or self.layer_pick not in LAYER_PICKS:
            raise ValueError(f"init/layer_pick: allowed {', '.join(INITS)} / {', '.join(LAYER_PICKS)}")
        if self.family == "t5" and not self.share_embeddings:
            raise ValueError("share_embeddings: T5 students always share their embeddings")
        if self.family == "t5" and self.decoder_layers > self.encoder_layers:
            raise ValueError("decoder_layers: a T5 student cannot have more decoder than encoder layers (transformers 5 cannot generate with it)")

    def short(self) -> str:
        """One-line summary, e.g. `marian E4 D1 d128 h4 ffn512 shared`."""
        tie = "shared" if self.share_embeddings else "separate"
        init = f" init=teacher/{self.layer_pick}" if self.init == "teacher" else ""
        return f"{self.family} E{self.encoder_layers} D{self.decoder_layers} d{self.hidden} h{self.heads} ffn{self.ffn} {tie}{init}"

    def param_counts(
        self, vocab_size: int, max_positions: int, feed_forward: str = "relu", target_vocab: int | None = None
    ) -> dict[str, int]:
        """Parameter counts derived from the architecture (must match the built model, as
        `distill.evaluate.param_counts` counts it: token, position and relative-position
        embeddings and an output projection of its own are the embedding part). `target_vocab`:
        a Marian teacher's target vocabulary, when it has one apart from the source's."""
        d, f, enc, dec = self.hidden, self.ffn, self.encoder_layers, self.decoder_layers
        if self.family == "marian":
            target = (target_vocab or vocab_size) * d  # the target embedding, tied to the output layer
            embedding = target + 2 * max_positions * d  # sinusoidal positions are (frozen) parameters
            attention = 4 * (d * d + d)
            ffn = (d * f + f) + (f * d + d)
            body = enc * (attention + ffn + 4 * d) + dec * (2 * attention + ffn + 6 * d)
        else:
            embedding = vocab_size * d + 2 * T5_BUCKETS * self.heads  # one bucket table per stack
            attention = 4 * d * d
            ffn = (3 if feed_forward.startswith("gated-") else 2) * d * f
            body = enc * (attention + ffn + 2 * d) + dec * (2 * attention + ffn + 3 * d) + 2 * d
        source = 0 if self.share_embeddings else vocab_size * d  # the target's is tied to the output
        return {"params": embedding + source + body, "non_embedding_params": body}


T5_BUCKETS = 32


def build_seq2seq_config(arch: Seq2SeqArch, teacher_config: Any, max_positions: int) -> Any:
    """The Hugging Face config of a student that shares the teacher's vocabulary and special
    tokens; settings a student of the teacher's own family can take from it (activation,
    embedding scale, T5's feed-forward kind) are the teacher's."""
    from transformers import AutoConfig

    same = teacher_config.model_type == arch.family
    tokens = {
        name: getattr(teacher_config, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    }
    if tokens["decoder_start_token_id"] is None:
        tokens["decoder_start_token_id"] = tokens["pad_token_id"]
    common = {"vocab_size": teacher_config.vocab_size, **tokens}
    if arch.family == "t5":
        return AutoConfig.for_model(
            "t5",
            d_model=arch.hidden,
            d_kv=arch.head_dim,
            num_heads=arch.heads,
            d_ff=arch.ffn,
            num_layers=arch.encoder_layers,
            num_decoder_layers=arch.decoder_layers,
            relative_attention_num_buckets=T5_BUCKETS,
            feed_forward_proj=teacher_config.feed_forward_proj if same else "relu",
            # T5's config reads this as whether to scale the decoder's outputs (T5 1.0 does, 1.1 not).
            tie_word_embeddings=teacher_config.scale_decoder_outputs if same else True,
            **common,
        )
    return AutoConfig.for_model(
        "marian",
        d_model=arch.hidden,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads,
        decoder_attention_heads=arch.heads,
        encoder_ffn_dim=arch.ffn,
        decoder_ffn_dim=arch.ffn,
        max_position_embeddings=max_positions,
        share_encoder_decoder_embeddings=arch.share_embeddings,
        decoder_vocab_size=target_vocab(teacher_config),
        tie_word_embeddings=True,  # transformers 5 unties every embedding of a Marian model without it
        scale_embedding=teacher_config.scale_embedding if same else True,
        activation_function=teacher_config.activation_function if same else "swish",
        forced_eos_token_id=tokens["eos_token_id"],  # Marian's default is OPUS-MT's EOS id, not this vocabulary's
        **common,
    )


def build_seq2seq(arch: Seq2SeqArch, teacher_config: Any, max_positions: int) -> Any:
    """A freshly initialized `AutoModelForSeq2SeqLM` for the architecture."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_config(build_seq2seq_config(arch, teacher_config, max_positions))
