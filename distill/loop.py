"""The distillation loop shared by the brief trial run and the full run.

A plain loop you can read top to bottom: seeded block sampling, AdamW, linear warmup then
cosine decay, gradient clipping, bf16 autocast on CUDA and fp32 on CPU. Without teacher
targets it is ordinary next-token training (used to train the demo teacher).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distill.losses import next_token_ce, topk_kd_loss

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A distillation budget and its optimizer (the `[distill]` section of a study spec)."""

    steps: int = 100
    """optimizer steps (ignored when `tokens` is set)"""
    tokens: int = 0
    """budget in training tokens; when > 0, steps = tokens / (batch_size x block_length)"""
    batch_size: int = 16
    """blocks per step"""
    lr: float = 1e-3
    """peak learning rate of AdamW"""
    warmup: float = 0.1
    """share of the steps spent warming the learning rate up linearly"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """clip the gradient norm to this value (0: no clipping)"""
    temperature: float = 2.0
    """softmax temperature of the KD term"""
    kd_weight: float = 1.0
    """weight of KL(teacher || student)"""
    ce_weight: float = 0.5
    """weight of cross-entropy on the ground-truth next token"""
    top_k: int = 32
    """teacher log-probabilities kept per position in the teacher cache"""

    def __post_init__(self) -> None:
        if self.steps < 1 and self.tokens < 1:
            raise ValueError(f"steps: must be >= 1 (or set tokens), got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup: must be in [0, 1), got {self.warmup}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise ValueError("kd_weight/ce_weight: must be >= 0 and not both 0")
        if self.top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {self.top_k}")

    def total_steps(self, block_length: int) -> int:
        if self.tokens > 0:
            return max(1, self.tokens // (self.batch_size * block_length))
        return self.steps


@dataclasses.dataclass(frozen=True)
class TeacherTargets:
    """The teacher's top-k next-token log-probabilities for every block: (N, L-1, K) each."""

    logprobs: np.ndarray
    indices: np.ndarray
    temperature: float


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA, plain fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def distill(
    student: torch.nn.Module,
    blocks: np.ndarray,
    cfg: DistillConfig,
    *,
    targets: TeacherTargets | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train `student` on `blocks` (N, L) int32 for the budget in `cfg`; returns the losses.

    With `targets` the loss is kd_weight * KL(teacher || student) at cfg.temperature plus
    ce_weight * CE; without, it is CE alone. Raises FloatingPointError on a non-finite loss.
    `on_step(step, total, loss)` is called after every optimizer step.
    """
    device = torch.device(device)
    total = cfg.total_steps(blocks.shape[1])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student.to(device).train()
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup * total), total))
    order = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    losses: list[float] = []
    for step in range(total):
        if cursor + cfg.batch_size > len(order):  # a new epoch in a new order
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        idx = np.sort(order[cursor : cursor + cfg.batch_size].numpy())
        cursor += cfg.batch_size
        tokens = torch.from_numpy(blocks[idx].astype(np.int64)).to(device)  # (B, L)
        with autocast(device):
            logits = student(input_ids=tokens).logits[:, :-1]  # (B, L-1, V)
        loss = next_token_ce(logits, tokens[:, 1:])
        if targets is not None:
            t_logp = torch.from_numpy(targets.logprobs[idx]).to(device)  # (B, L-1, K)
            t_idx = torch.from_numpy(targets.indices[idx]).to(device)  # (B, L-1, K)
            kd = topk_kd_loss(logits, t_logp, t_idx, targets.temperature)
            loss = cfg.ce_weight * loss + cfg.kd_weight * kd
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, total, losses[-1])
    student.eval()
    return losses
