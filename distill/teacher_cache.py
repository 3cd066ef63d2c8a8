"""Once per study: tokenize the data and cache the teacher's outputs on disk for every trial.

For each block the cache holds the teacher's top-k next-token log-probabilities (float16) and
their token ids (int32): N x (L-1) x k x 6 bytes, e.g. 10k blocks of 512 tokens at k=32 is
under 1 GB whatever the vocabulary size. Training targets are taken at the distillation
temperature, held-out targets at temperature 1 (for the KL and agreement metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data import SPLITS, DataConfig, load_documents, pack
from distill.errors import InputError
from distill.evaluate import evaluate_lm, size_metrics
from distill.loop import TeacherTargets, autocast
from distill.teachers import TeacherConfig, is_local, load_teacher, teacher_path
from search_spaces import decoder_importance

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A finished cache folder; cheap to pickle and send to trial workers."""

    path: Path

    def array(self, name: str) -> np.ndarray:
        """A cached array, memory-mapped."""
        return np.load(self.path / f"{name}.npy", mmap_mode="r")

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """The cache's description (read once per object; a finished cache never changes)."""
        return json.loads((self.path / "meta.json").read_text())

    def blocks(self, split: str) -> np.ndarray:
        """(N, L) int32 token blocks of `train`, `valid` or `eval`."""
        return self.array(f"{split}_blocks")

    def targets(self, split: str) -> TeacherTargets:
        """The teacher's top-k log-probabilities and ids for `split`, (N, L-1, k) each."""
        temperature = self.meta["temperature"] if split == "train" else 1.0
        return TeacherTargets(self.array(f"{split}_topk_logp"), self.array(f"{split}_topk_idx"), temperature)

    def teacher_config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path / "teacher")


@torch.no_grad()
def _teacher_topk(
    teacher: torch.nn.Module,
    blocks: np.ndarray,
    k: int,
    temperature: float,
    out: Path,
    prefix: str,
    device: torch.device,
) -> None:
    n, length = blocks.shape
    logp = np.lib.format.open_memmap(out / f"{prefix}_topk_logp.npy", "w+", np.float16, (n, length - 1, k))
    idx = np.lib.format.open_memmap(out / f"{prefix}_topk_idx.npy", "w+", np.int32, (n, length - 1, k))
    batch = 16
    for start in range(0, n, batch):
        tokens = torch.from_numpy(blocks[start : start + batch].astype(np.int64)).to(device)
        with autocast(device):
            logits = teacher(input_ids=tokens).logits[:, :-1].float()  # (B, L-1, V)
        top = torch.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)  # (B, L-1, k)
        logp[start : start + batch] = top.values.cpu().numpy().astype(np.float16)
        idx[start : start + batch] = top.indices.cpu().numpy().astype(np.int32)
    logp.flush()
    idx.flush()


def cache_key(
    teacher: TeacherConfig,
    data: DataConfig,
    base_dir: Path,
    top_k: int,
    temperature: float,
    seed: int,
    extra: object = None,
) -> str:
    model = teacher_path(teacher, base_dir)
    stamp = None
    if is_local(model) and (Path(model) / "config.json").exists():
        stamp = (Path(model) / "config.json").stat().st_mtime_ns
    blob = json.dumps(
        [model, teacher.revision, stamp, dataclasses.asdict(data), top_k, temperature, seed, extra],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(
    teacher_cfg: TeacherConfig,
    data_cfg: DataConfig,
    *,
    base_dir: Path,
    cache_root: Path,
    top_k: int,
    temperature: float,
    seed: int = 0,
    device: str = "cpu",
) -> PreparedData:
    """Load the teacher and data once and fill the cache; a finished cache is reused as is."""
    final = cache_root / cache_key(teacher_cfg, data_cfg, base_dir, top_k, temperature, seed)
    if (final / "meta.json").exists():
        logger.info("reusing the teacher cache %s", final)
        return PreparedData(final)
    docs = load_documents(data_cfg, base_dir, seed)
    # A teacher trained here may see the validation documents (they only choose the students'
    # checkpoints); the held-out evaluation documents stay unseen by teacher and students.
    teacher, tokenizer = load_teacher(teacher_cfg, base_dir, docs["train"] + docs["valid"], data_cfg.block_length)
    if top_k > teacher.config.vocab_size:
        raise InputError(f"distill.top_k: {top_k} exceeds the teacher's vocabulary ({teacher.config.vocab_size})")
    dev = torch.device(device)
    teacher.to(dev)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logger.info("tokenizing %s documents", " + ".join(f"{len(d)} {k}" for k, d in docs.items()))
    length = data_cfg.block_length
    caps = {"train": data_cfg.train_blocks, "valid": data_cfg.valid_blocks, "eval": data_cfg.eval_blocks}
    blocks = {split: pack(docs[split], tokenizer, length, caps[split]) for split in SPLITS}
    for split, arr in blocks.items():
        np.save(tmp / f"{split}_blocks.npy", arr)
        logger.info("teacher outputs for %d %s blocks (top %d)", len(arr), split, top_k)
        _teacher_topk(teacher, arr, top_k, temperature if split == "train" else 1.0, tmp, split, dev)
    teacher.config.save_pretrained(tmp / "teacher")
    tokenizer.save_pretrained(tmp / "teacher")
    if teacher.config.model_type in ("gpt2", "llama", "qwen2", "mistral"):  # for students sliced from the teacher
        calib = torch.from_numpy(blocks["train"][:16].astype(np.int64)).to(dev)
        torch.save(decoder_importance(teacher, {"input_ids": calib}), tmp / "importance.pt")
    eval_targets = TeacherTargets(
        np.load(tmp / "eval_topk_logp.npy", mmap_mode="r"), np.load(tmp / "eval_topk_idx.npy", mmap_mode="r"), 1.0
    )
    teacher_metrics = evaluate_lm(teacher, blocks["eval"], eval_targets, device=dev) | size_metrics(
        teacher, length, device=dev
    )
    meta = {
        "teacher": teacher_path(teacher_cfg, base_dir),
        "teacher_metrics": teacher_metrics,
        "vocab_size": teacher.config.vocab_size,
        "block_length": length,
        "train_blocks": len(blocks["train"]),
        "eval_blocks": len(blocks["eval"]),
        "valid_blocks": len(blocks["valid"]),
        "data": dataclasses.asdict(data_cfg),
        "top_k": top_k,
        "temperature": temperature,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    logger.info("teacher: held-out perplexity %.2f", teacher_metrics["perplexity"])
    return PreparedData(final)
