"""Once per study for embedding teachers: paragraphs encoded, and the teacher's sentence
embeddings (and, where the loss asks, last-layer states and Q/K/V) cached for every trial."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from distill.data import SPLITS, DataConfig, encode_texts, load_documents, paragraphs
from distill.embedding import LastLayerQKV, _trimmed, evaluate_embeddings, pool
from distill.errors import InputError
from distill.evaluate import param_counts
from distill.loop import DistillConfig, autocast
from distill.teacher_cache import PreparedData, cache_key
from distill.teachers import TeacherConfig, load_encoder_teacher
from search_spaces import bert_importance

logger = logging.getLogger(__name__)
CALIBRATION = 32


@torch.no_grad()
def _teacher_outputs(teacher, pooling, ids, mask, out: Path, split: str, cfg: DistillConfig, device) -> None:
    n, length = ids.shape
    width = teacher.config.hidden_size
    arrays = {"emb": np.lib.format.open_memmap(out / f"{split}_emb.npy", "w+", np.float32, (n, width))}
    layers = teacher.config.num_hidden_layers + 1  # the embedding output and every layer's
    if split == "train" and cfg.hidden_weight > 0:
        arrays["hidden"] = np.lib.format.open_memmap(
            out / "train_hidden.npy", "w+", np.float16, (n, layers, length, width)
        )
    if split == "train" and cfg.relation_weight > 0:
        for name in ("query", "key", "value"):
            arrays[name] = np.lib.format.open_memmap(out / f"train_{name}.npy", "w+", np.float16, (n, length, width))
    qkv = LastLayerQKV(teacher)
    try:
        for start in range(0, n, 32):
            i, m = _trimmed(ids[start : start + 32], mask[start : start + 32], device)
            t = i.shape[1]
            with autocast(device):
                states = teacher(input_ids=i, attention_mask=m, output_hidden_states="hidden" in arrays)
            hidden = states.last_hidden_state.float()  # (B, t, D)
            emb = pool(hidden, m, pooling["mode"])
            if pooling["normalize"]:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            arrays["emb"][start : start + 32] = emb.cpu().numpy()
            if "hidden" in arrays:
                every = torch.stack(states.hidden_states, dim=1).float()  # (B, layers, t, D)
                arrays["hidden"][start : start + 32, :, :t] = every.cpu().numpy().astype(np.float16)
            for name in ("query", "key", "value"):
                if name in arrays:
                    arrays[name][start : start + 32, :t] = qkv.out[name].float().cpu().numpy().astype(np.float16)
    finally:
        qkv.close()
    for a in arrays.values():
        a.flush()


def prepare_embedding(
    teacher_cfg: TeacherConfig,
    data_cfg: DataConfig,
    loss_cfg: DistillConfig,
    *,
    base_dir: Path,
    cache_root: Path,
    seed: int = 0,
    device: str = "cpu",
) -> PreparedData:
    """Load the encoder teacher and the paragraphs once and fill the cache; reuse a finished one."""
    from distill.embedding import sentence_latency_ms
    from distill.evaluate import peak_memory_mb

    terms = (loss_cfg.hidden_weight > 0, loss_cfg.relation_weight > 0)
    final = cache_root / cache_key(teacher_cfg, data_cfg, base_dir, 0, 1.0, seed, extra=terms)
    if (final / "meta.json").exists():
        logger.info("reusing the teacher cache %s", final)
        return PreparedData(final)
    docs = load_documents(data_cfg, base_dir, seed)
    teacher, tokenizer, pooling, path = load_encoder_teacher(teacher_cfg, base_dir)
    dev = torch.device(device)
    teacher.to(dev)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    caps = {"train": data_cfg.train_blocks, "valid": data_cfg.valid_blocks, "eval": data_cfg.eval_blocks}
    length = data_cfg.block_length
    counts = {}
    for split in SPLITS:
        texts = paragraphs(docs[split])
        if len(texts) < 2:
            raise InputError(f"data: the {split} split holds {len(texts)} paragraph(s); give more text")
        ids, mask = encode_texts(texts, tokenizer, length, caps[split])
        np.save(tmp / f"{split}_ids.npy", ids)
        np.save(tmp / f"{split}_mask.npy", mask)
        counts[split] = len(ids)
        logger.info("teacher embeddings for %d %s paragraphs", len(ids), split)
        _teacher_outputs(teacher, pooling, ids, mask, tmp, split, loss_cfg, dev)
    calib = {
        "input_ids": torch.from_numpy(np.load(tmp / "train_ids.npy")[:CALIBRATION].astype(np.int64)).to(dev),
        "attention_mask": torch.from_numpy(np.load(tmp / "train_mask.npy")[:CALIBRATION].astype(np.int64)).to(dev),
    }
    torch.save(
        {k: v if isinstance(v, torch.Tensor) else list(v) for k, v in bert_importance(teacher, calib).items()},
        tmp / "importance.pt",
    )
    teacher.config.save_pretrained(tmp / "teacher")
    tokenizer.save_pretrained(tmp / "teacher")

    def teacher_embed(input_ids, attention_mask):
        h = teacher(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        e = pool(h, attention_mask, pooling["mode"])
        return torch.nn.functional.normalize(e, dim=-1) if pooling["normalize"] else e

    ids, mask = np.load(tmp / "eval_ids.npy"), np.load(tmp / "eval_mask.npy")
    metrics = evaluate_embeddings(teacher_embed, ids, mask, np.load(tmp / "eval_emb.npy"), dev)
    metrics |= param_counts(teacher)
    metrics |= {
        "latency_ms": sentence_latency_ms(teacher_embed, 1, length, dev),
        "latency_ms_b32": sentence_latency_ms(teacher_embed, 32, length, dev),
        "peak_memory_mb": peak_memory_mb(teacher, length, device=dev),
    }
    meta = {
        "task": "embedding",
        "teacher": path,
        "teacher_metrics": metrics,
        "pooling": pooling,
        "teacher_dim": teacher.config.hidden_size,
        "teacher_heads": teacher.config.num_attention_heads,
        "teacher_layers": teacher.config.num_hidden_layers,
        "block_length": length,
        **{f"{k}_items": v for k, v in counts.items()},
        "data": dataclasses.asdict(data_cfg),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    logger.info(
        "teacher: %d train / %d valid / %d eval paragraphs cached", counts["train"], counts["valid"], counts["eval"]
    )
    return PreparedData(final)
