"""Loading teachers through `from_pretrained`, and training the demo teacher on first use."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from distill.errors import InputError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TeacherTraining:
    """How to train a small GPT teacher when the teacher folder does not exist yet."""

    vocab_size: int = 4096
    """byte-level BPE vocabulary trained on the study's training documents"""
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size: must be >= 300 (256 bytes + merges), got {self.vocab_size}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden: must be a multiple of heads ({self.heads}), got {self.hidden}")
        if min(self.layers, self.steps, self.batch_size) < 1:
            raise ValueError("layers/steps/batch_size: must be >= 1")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The teacher model (the `[teacher]` section of a study spec)."""

    model: str = ""
    """a hub id, or a local folder (a path that exists, or starts with ./ ../ or /),
    relative to the spec's folder"""
    revision: str | None = None
    """hub revision (branch, tag or commit)"""
    trust_remote_code: bool = False
    """allow the model's own Python code to run (off by default)"""
    train: TeacherTraining | None = None
    """train a small GPT into `model` (a local folder) on first use"""
    package: str = ""
    """instead of `model`: a Python package that ships the model; its get_model_path() gives the folder"""

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.package):
            raise ValueError("model: give either model (a hub id or a local folder) or package")


def teacher_path(cfg: TeacherConfig, base_dir: Path) -> str:
    """Where the teacher loads from: a package's model folder, a local folder or a hub id."""
    if cfg.package:
        import importlib

        try:
            return str(importlib.import_module(cfg.package).get_model_path())
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"teacher.package: cannot get a model folder from {cfg.package!r} ({exc}); install it"
            ) from None
    return resolve_model(cfg.model, base_dir)


def resolve_model(model: str, base_dir: Path) -> str:
    """A local folder's absolute path, or the hub id unchanged."""
    local = (base_dir / model).resolve()
    if model.startswith(("./", "../", "/")) or local.exists():
        return str(local)
    return model


def is_local(model: str) -> bool:
    return Path(model).is_absolute()


def load_teacher(
    cfg: TeacherConfig, base_dir: Path, train_texts: list[str] | None = None, block_length: int = 128
) -> tuple[Any, Any]:
    """The teacher model (eval mode) and its tokenizer, training the demo teacher if asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = teacher_path(cfg, base_dir)
    if is_local(path) and not (Path(path) / "config.json").exists():
        if cfg.train is None:
            raise InputError(
                f"teacher.model: folder {cfg.model!r} does not exist (or has no config.json); "
                "give an existing folder, a hub id, or a [teacher.train] section"
            )
        if train_texts is None:
            raise InputError("teacher.train: training the teacher needs the study's training documents")
        train_teacher(cfg.train, train_texts, Path(path), block_length)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError as exc:  # not found, unreachable hub, no safetensors weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"teacher.model: cannot load {cfg.model!r}: {first}") from exc
    return model.eval(), tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained with `tokenizers`, wrapped for `transformers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)


def train_teacher(cfg: TeacherTraining, texts: list[str], out: Path, block_length: int = 128, seed: int = 0) -> None:
    """Train a tokenizer and a GPT-2 on `texts` and `save_pretrained` both into `out`."""
    import torch
    from transformers import PretrainedConfig

    from distill.data import pack
    from distill.loop import DistillConfig, distill
    from search_spaces import DecoderArch, build_model

    logger.info("training the teacher into %s (%d steps); later runs reuse it", out, cfg.steps)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    blocks = pack(texts, tokenizer, block_length)
    arch = DecoderArch("gpt2", cfg.layers, cfg.heads, cfg.heads, cfg.hidden // cfg.heads, 4.0, True)
    vocab = PretrainedConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(seed)
    model = build_model(arch, vocab, block_length)
    loop = DistillConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=0.05)

    def on_step(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            logger.info("teacher step %d/%d, loss %.3f", step, total, loss)

    distill(model, blocks, loop, seed=seed, on_step=on_step)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # a killed run never leaves a half-written teacher behind


def load_encoder_teacher(cfg: TeacherConfig, base_dir: Path) -> tuple[Any, Any, dict[str, Any], str]:
    """An encoder teacher (`AutoModel`, eval mode), its tokenizer, its pooling and its folder."""
    from transformers import AutoModel, AutoTokenizer

    from distill.embedding import read_pooling

    path = teacher_path(cfg, base_dir)
    if is_local(path) and not (Path(path) / "config.json").exists():
        raise InputError(f"teacher.model: folder {cfg.model or path!r} does not exist (or has no config.json)")
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModel.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"teacher.model: cannot load {cfg.model or path!r}: {first}") from exc
    if model.config.model_type != "bert":
        raise InputError(
            f"teacher.model: embedding students are BERT encoders; the teacher is {model.config.model_type!r}"
        )
    pooling = read_pooling(Path(path)) if is_local(path) else {"mode": "mean", "normalize": False}
    return model.eval(), tokenizer, pooling, path
