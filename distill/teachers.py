"""Teachers: the `[teacher]` section, where a teacher loads from, and `from_pretrained` with
the safe defaults (safetensors only, no remote code unless the spec allows it)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from distill.errors import InputError
from distill.precision import teacher_dtype

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TeacherTraining:
    """How to train a small teacher (of the task's kind) when the teacher folder does not exist yet."""

    vocab_size: int = 4096
    """byte-level BPE vocabulary trained on the study's training documents"""
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    family: str = ""
    """the model family (causal LM: gpt2, the default, llama, qwen2 or mistral; translation:
    marian)"""

    def __post_init__(self) -> None:
        from search_spaces import FAMILIES

        trainable = (*FAMILIES, "marian")  # the decoders a causal LM trains, the Marian models translation trains
        if self.family and self.family not in trainable:
            raise ValueError(f"family: must be one of {', '.join(trainable)}, got {self.family!r}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size: must be >= 300 (256 bytes + merges), got {self.vocab_size}")
        for key in ("layers", "hidden", "heads", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden: must be a multiple of heads ({self.heads}), got {self.hidden}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The teacher model (the `[teacher]` section of a study spec)."""

    model: str = ""
    """a hub id, or a local folder (a path that exists, or starts with ./ ../ or /),
    relative to the spec's folder"""
    revision: str | None = None
    """hub revision (branch, tag or commit)"""
    trust_remote_code: bool = False
    """allow the model's own Python code to run (off by default); only with a `revision`
    pinned to a commit (40 hex digits), so that the code that runs is the code reviewed"""
    train: TeacherTraining | None = None
    """train a small teacher of the task's kind (a GPT, a Marian translator) into `model` (a
    local folder) on first use (tasks that can train their teacher)"""
    package: str = ""
    """instead of `model`: a Python package that ships the model; its get_model_path() gives the folder"""

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.package):
            raise ValueError("model: give either model (a hub id or a local folder) or package")
        if self.trust_remote_code and not re.fullmatch(r"[0-9a-f]{40}", self.revision or ""):
            got = f"revision {self.revision!r}" if self.revision else "no revision"
            raise ValueError(
                f"trust_remote_code: runs the model's own code, so it needs teacher.revision pinned to a commit "
                f"(40 hex digits), not a branch or tag; got {got}"
            )


@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights load from, resolved once per study and kept with its cache, so
    that every trial and full run loads the same teacher (same revision, same code policy)."""

    path: str
    """an absolute local folder or a hub id"""
    revision: str | None
    trust_remote_code: bool
    name: str
    """how model cards and reports name the teacher: the hub id (and revision), the package, or
    the folder as the spec gives it, never a path of the machine that ran the study"""

    @property
    def local(self) -> bool:
        return Path(self.path).is_absolute()

    def exists(self) -> bool:
        return not self.local or (Path(self.path) / "config.json").exists()

    def load(self, auto_class: str) -> tuple[Any, Any]:
        """The frozen model (eval mode) through `transformers.<auto_class>`, in the dtype of
        the enclosing precision (`distill.precision.teacher_dtype`), and its tokenizer."""
        tokenizer = self.tokenizer()
        return self.load_model(auto_class, teacher_dtype()).eval(), tokenizer

    def config(self) -> Any:
        """The teacher's config alone (what kind of model it is, before loading weights)."""
        if not self.exists():
            raise InputError(
                f"teacher.model: folder {self.name!r} does not exist (or has no config.json); "
                "give an existing folder, a hub id, or a [teacher.train] section where the task trains its teacher"
            )
        return self._pretrained("AutoConfig")

    def tokenizer(self) -> Any:
        """The teacher's tokenizer alone."""
        self.config()  # one clear error for a folder that is not there
        return self._pretrained("AutoTokenizer")

    def weights(self, auto_class: str) -> Any:
        """The teacher's weights as students are sliced from them, read one tensor at a time
        from its safetensors files when a slice of it is asked for (`search_spaces`'
        `SafetensorsWeights`: a worker never holds the whole teacher), or the loaded model's
        where it has no such files here."""
        from search_spaces import SafetensorsWeights, safetensors_files

        folder = Path(self.path)
        if not self.local:  # the hub's copy: in the local cache since the study's teacher ran (else fetched)
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            get = dict(revision=self.revision, allow_patterns=["model*.safetensors", "model.safetensors.index.json", "config.json"])
            try:
                folder = Path(snapshot_download(self.path, local_files_only=True, **get))
            except LocalEntryNotFoundError:
                folder = Path(snapshot_download(self.path, **get))
        files = safetensors_files(folder)
        if not files:
            return self.load_model(auto_class)
        return SafetensorsWeights(files, self.config(), auto_class)

    def load_model(self, auto_class: str, dtype: torch.dtype = torch.float32) -> Any:
        """The weights alone, in `dtype` whatever the checkpoint's (fp32: students sliced
        from the teacher)."""
        return self._pretrained(auto_class, use_safetensors=True, dtype=dtype)

    def _pretrained(self, auto_class: str, **kwargs: Any) -> Any:
        import transformers
        from huggingface_hub.errors import StrictDataclassError  # transformers' config validation

        try:
            return getattr(transformers, auto_class).from_pretrained(
                self.path, revision=self.revision, trust_remote_code=self.trust_remote_code, **kwargs
            )
        # OSError: not found, moved, unreachable hub, no safetensors weights; ImportError: a
        # tokenizer whose library is missing; ValueError: a model the auto class does not know.
        except StrictDataclassError as exc:  # a config.json field of the wrong type or value
            cause = re.sub(r"^\w+: ", "", str(exc).strip().splitlines()[-1].strip())
            raise InputError(f"teacher.model: cannot load {self.name!r}: config.json: {cause[:1].lower()}{cause[1:]}") from None
        except (OSError, ImportError, ValueError) as exc:
            weights = Path(self.path) if self.local else None
            if kwargs.get("use_safetensors") and weights and not any(weights.glob("*.safetensors")):
                pickled = sorted(p.name for p in weights.glob("*.bin")) or sorted(p.name for p in weights.glob("*.pt"))
                if pickled:
                    raise InputError(
                        f"teacher.model: {self.name!r} holds {pickled[0]} but no .safetensors weights; teachers load from "
                        "safetensors only (pickled weights can run code): convert it, e.g. load it once and save_pretrained"
                    ) from None
            raise InputError(f"teacher.model: cannot load {self.name!r}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def teacher_source(cfg: TeacherConfig, base_dir: Path) -> TeacherSource:
    """Resolve the `[teacher]` section: a package's model folder, a local folder or a hub id."""
    source = _resolve(cfg, base_dir)
    if source.trust_remote_code:
        logger.warning("teacher %s: its own code may run (trust_remote_code), pinned at revision %s", source.name, source.revision)
    return source


def _resolve(cfg: TeacherConfig, base_dir: Path) -> TeacherSource:
    if cfg.package:
        try:
            path = str(importlib.import_module(cfg.package).get_model_path())
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"teacher.package: cannot get a model folder from {cfg.package!r} ({exc}); install it"
            ) from None
        dist = cfg.package.replace("_", "-")
        try:
            name = f"{dist} {importlib.metadata.version(dist)} (package)"
        except importlib.metadata.PackageNotFoundError:
            name = f"{cfg.package} (package)"
        return TeacherSource(path, cfg.revision, cfg.trust_remote_code, name)
    local = (base_dir / cfg.model).resolve()
    if cfg.model.startswith(("./", "../", "/")) or local.exists():
        return TeacherSource(str(local), cfg.revision, cfg.trust_remote_code, cfg.model)
    name = f"{cfg.model}@{cfg.revision}" if cfg.revision else cfg.model
    return TeacherSource(cfg.model, cfg.revision, cfg.trust_remote_code, name)


def byte_level_bpe(texts: list[str], vocab_size: int, special_tokens: list[str], unk: str | None, prefix_space: bool) -> Any:
    """A byte-level BPE (no character is unknown) trained with `tokenizers` on `texts`, its
    `special_tokens` first in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk) if unk else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer for a causal LM, wrapped for `transformers`."""
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = byte_level_bpe(texts, vocab_size, [eos], None, prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)


def train_and_save(
    model: Any,
    tokenizer: Any,
    loss: Any,
    lengths: Any,
    cfg: TeacherTraining,
    out: Path,
    seed: int = 0,
    extra: Any = None,
) -> None:
    """Train a teacher made here (`loss` of the indices of a batch of items of `lengths`
    tokens) for `cfg`'s budget, logging its progress, then `save_pretrained` it, its tokenizer
    and what `extra(folder)` writes into `out`, published whole: a killed run never leaves a
    half-written teacher behind."""
    from distill.files import written_whole
    from distill.loop import Budget, train

    def on_step(step: int, total: int, value: float) -> None:
        if step % 100 == 0 or step == total:
            logger.info("teacher step %d/%d, loss %.3f", step, total, value)

    budget = Budget(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=0.05)
    train(model, budget, loss, lengths, seed=seed, on_step=on_step)
    with written_whole(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
