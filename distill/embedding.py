"""Sentence-embedding distillation: the teacher's pooling, the student with its projection,
the teacher's outputs, the batch loss and the evaluation of embedding students."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.evaluate import embedding_fidelity, median_ms
from distill.loop import DistillConfig, autocast
from distill.losses import (
    embedding_cosine_loss,
    embedding_mse_loss,
    hidden_state_loss,
    relation_kd_loss,
)

POOLING_MODES = ("mean", "cls", "max")


def read_pooling(folder: Path) -> dict[str, Any]:
    """Pooling of a sentence-transformers folder (modules.json, 1_Pooling/config.json,
    Normalize); a plain HF folder gets mean pooling without normalization."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return {"mode": "mean", "normalize": False}
    modules = json.loads(modules_file.read_text())
    mode, normalize = "mean", False
    for m in modules:
        if m["type"].endswith("Pooling"):
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            mode = next(
                (
                    p
                    for p in POOLING_MODES
                    if cfg.get(f"pooling_mode_{p}_tokens" if p != "cls" else "pooling_mode_cls_token")
                ),
                "mean",
            )
        normalize = normalize or m["type"].endswith("Normalize")
    return {"mode": mode, "normalize": normalize}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embeddings (B, D) from token states (B, T, D) over real tokens, mask (B, T)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class EmbeddingStudent(torch.nn.Module):
    """An encoder, the teacher's pooling, and a projection to the teacher's embedding width
    (absent when the widths agree), so that the student's embeddings stand in for the teacher's."""

    def __init__(
        self, encoder: Any, teacher_dim: int, pooling: dict[str, Any], projection: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = dict(pooling)
        width = encoder.config.hidden_size
        self.projection = torch.nn.Linear(width, teacher_dim, bias=False) if width != teacher_dim else None
        if self.projection is not None and projection is not None:
            with torch.no_grad():
                self.projection.weight.copy_(projection)
        self.hidden_projection = torch.nn.Linear(width, teacher_dim, bias=False) if width != teacher_dim else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, internals: bool = False) -> Any:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=internals)
        emb = pool(out.last_hidden_state, attention_mask, self.pooling["mode"])
        if self.projection is not None:
            emb = self.projection(emb)
        if self.pooling["normalize"]:
            emb = F.normalize(emb, dim=-1)
        return (emb, out.hidden_states) if internals else emb


def selection_matrix(kept: torch.Tensor, width: int) -> torch.Tensor:
    """(width_teacher, width_student) 0/1 matrix putting kept channel j back at kept[j]."""
    m = torch.zeros(width, len(kept))
    m[kept, torch.arange(len(kept))] = 1.0
    return m


class LastLayerQKV:
    """Captures the query, key and value projections of a BERT model's last layer."""

    def __init__(self, model: Any) -> None:
        self.out: dict[str, torch.Tensor] = {}
        attn = model.encoder.layer[-1].attention.self
        self.hooks = [
            getattr(attn, n).register_forward_hook(lambda _m, _i, o, n=n: self.out.__setitem__(n, o))
            for n in ("query", "key", "value")
        ]

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _trimmed(ids: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch cut to its longest real sequence: the cache pads to the full length."""
    length = max(1, int(mask.sum(1).max()))
    i = torch.from_numpy(ids[:, :length].astype(np.int64)).to(device)
    return i, torch.from_numpy(mask[:, :length].astype(np.int64)).to(device)


@torch.no_grad()
def encode(
    model: Callable[..., Any], ids: np.ndarray, mask: np.ndarray, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """Embeddings (N, D) of a model that maps (input_ids, attention_mask) to (B, D)."""
    out = []
    for start in range(0, len(ids), batch):
        i, m = _trimmed(ids[start : start + batch], mask[start : start + batch], device)
        with autocast(device):
            out.append(model(input_ids=i, attention_mask=m).float().cpu())
    return torch.cat(out)


def embedding_loss_fn(
    student: EmbeddingStudent,
    ids: np.ndarray,
    mask: np.ndarray,
    targets: dict[str, np.ndarray],
    cfg: DistillConfig,
    device: torch.device,
    relation_heads: int,
    layer_map: list[int] | None = None,
) -> Callable[[np.ndarray], torch.Tensor]:
    """The loss of a micro-batch: cosine + MSE on embeddings, and where asked, hidden states
    of mapped layers (student state j against teacher state layer_map[j], the embedding
    output included, through the student's learned projection; mean over the pairs) and
    MiniLM relations of the last layer."""

    def loss(idx: np.ndarray) -> torch.Tensor:
        i, m = _trimmed(ids[idx], mask[idx], device)
        teacher_emb = torch.from_numpy(np.asarray(targets["emb"][idx])).to(device)
        # Q/K/V are captured for this forward pass only: validation and export run hook-free.
        qkv = LastLayerQKV(student.encoder) if cfg.relation_weight > 0 else None
        try:
            with autocast(device):
                emb, states = student(i, m, internals=True)  # states: (B, t, d) per layer, embeddings first
        finally:
            if qkv is not None:
                qkv.close()
        total = cfg.cosine_weight * embedding_cosine_loss(emb, teacher_emb)
        total = total + cfg.mse_weight * embedding_mse_loss(emb, teacher_emb)
        if cfg.hidden_weight > 0:
            mapping = layer_map or list(range(len(states)))
            t_all = torch.from_numpy(np.asarray(targets["hidden"][idx][:, :, : m.shape[1]])).to(
                device
            )  # (B, Lt+1, t, D)
            project = student.hidden_projection or (lambda h: h)
            pairs = [hidden_state_loss(project(h), t_all[:, mapping[j]], m) for j, h in enumerate(states)]
            total = total + cfg.hidden_weight * torch.stack(pairs).mean()
        if qkv is not None:
            t = {
                n: torch.from_numpy(np.asarray(targets[n][idx][:, : m.shape[1]])).to(device)
                for n in ("query", "key", "value")
            }
            s = qkv.out
            rel = relation_kd_loss(s["query"], s["key"], t["query"], t["key"], m, relation_heads)
            rel = rel + relation_kd_loss(s["value"], s["value"], t["value"], t["value"], m, relation_heads)
            total = total + cfg.relation_weight * rel
        return total

    return loss


def evaluate_embeddings(
    student: Callable[..., Any], ids: np.ndarray, mask: np.ndarray, teacher_emb: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Cosine fidelity, Spearman of pairwise similarities and top-10 retrieval agreement."""
    if isinstance(student, torch.nn.Module):
        student.eval()
    return embedding_fidelity(encode(student, ids, mask, device), torch.from_numpy(np.array(teacher_emb)))


def sentence_latency_ms(model: Callable[..., Any], batch: int, seq_len: int, device: torch.device) -> float:
    """Median time per sentence of a forward pass over a (batch, seq_len) batch."""
    ids = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    return median_ms(lambda: model(input_ids=ids, attention_mask=mask), device, repeats=5) / batch
