"""The distillation loop shared by the brief trial run and the full run.

A plain loop you can read top to bottom: seeded block sampling, AdamW, linear warmup then
cosine decay, gradient clipping, bf16 autocast on CUDA and fp32 on CPU. Without teacher
targets it is ordinary next-token training (used to train the demo teacher).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
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
    cosine_weight: float = 1.0
    """embedding task: weight of 1 - cosine(student, teacher) sentence embeddings"""
    mse_weight: float = 1.0
    """embedding task: weight of the MSE between (normalized) sentence embeddings"""
    hidden_weight: float = 0.0
    """embedding task: weight of the last hidden states' MSE through a learned projection"""
    relation_weight: float = 0.0
    """embedding task: weight of the MiniLM attention and value relations of the last layer"""
    grad_accum: int = 1
    """micro-batches per step (batch_size must divide by it), for batches that do not fit"""
    eval_every: int = 0
    """validate every this many steps, keeping the best weights (0: never)"""
    checkpoint_every: int = 0
    """save a resumable checkpoint every this many steps (0: never)"""
    patience: int = 0
    """stop after this many validations without improvement (0: never stop early)"""

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
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"grad_accum: must be >= 1 and divide batch_size ({self.batch_size}), got {self.grad_accum}"
            )
        if min(self.cosine_weight, self.mse_weight, self.hidden_weight, self.relation_weight) < 0:
            raise ValueError("cosine_weight/mse_weight/hidden_weight/relation_weight: must be >= 0")
        if min(self.eval_every, self.checkpoint_every, self.patience) < 0:
            raise ValueError("eval_every/checkpoint_every/patience: must be >= 0")

    def total_steps(self, block_length: int) -> int:
        if self.tokens > 0:
            return max(1, self.tokens // (self.batch_size * block_length))
        return self.steps


@dataclasses.dataclass(frozen=True)
class FullConfig:
    """The budget of a full distillation (the `[full]` section of a study spec). The loss
    (temperature, weights, top_k) is the `[distill]` one: the teacher cache is made for it."""

    steps: int = 2000
    """optimizer steps (ignored when `tokens` is set)"""
    tokens: int = 0
    """budget in training tokens; when > 0, steps = tokens / (batch_size x block_length)"""
    batch_size: int = 16
    """blocks per step"""
    grad_accum: int = 1
    """micro-batches per step (batch_size must divide by it)"""
    lr: float = 1e-3
    """peak learning rate of AdamW"""
    warmup: float = 0.05
    """share of the steps spent warming the learning rate up, then cosine decay"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """clip the gradient norm to this value (0: no clipping)"""
    eval_every: int = 100
    """evaluate on held-out blocks every this many steps; the best weights are exported"""
    checkpoint_every: int = 100
    """save a checkpoint every this many steps, for `nas distill --resume`"""
    patience: int = 0
    """stop after this many evaluations without improvement (0: never stop early)"""

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.checkpoint_every < 1:
            raise ValueError("eval_every/checkpoint_every: must be >= 1")
        self.apply(DistillConfig())  # the shared checks of steps, batch, lr, ...

    def apply(self, loss: DistillConfig) -> DistillConfig:
        """The loop configuration: this budget with the loss of `loss`."""
        return dataclasses.replace(loss, **dataclasses.asdict(self))


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


@dataclasses.dataclass
class TrainResult:
    """What a run did: per-step losses, (step, validation score) pairs, the best step."""

    losses: list[float]
    evals: list[tuple[int, float]]
    best_step: int | None
    steps: int
    stopped_early: bool


def _optimizer(student: torch.nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a torn checkpoint


def distill(
    student: torch.nn.Module,
    blocks: np.ndarray,
    cfg: DistillConfig,
    *,
    targets: TeacherTargets | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
    validate: Callable[[torch.nn.Module], float] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    loss_fn: Callable[[np.ndarray], torch.Tensor] | None = None,
) -> TrainResult:
    """Train `student` on `blocks` (N, L) int32 for the budget in `cfg`.

    With `targets` the loss is kd_weight * KL(teacher || student) at the targets' temperature
    plus ce_weight * CE; without, it is CE alone. Raises FloatingPointError on a non-finite
    loss. `on_step(step, total, loss)` is called after every optimizer step.

    The long-run manners, all off for a brief run: `validate(student)` (lower is better) every
    cfg.eval_every steps, keeping the best weights, which the student holds at the end, and
    stopping after cfg.patience evaluations without improvement; a checkpoint of everything
    the run depends on (weights, optimizer, schedule, RNG, data position) in `checkpoint_dir`
    every cfg.checkpoint_every steps, from which `resume=True` continues the same run.

    Other tasks pass `loss_fn(indices)`: the loss of the items at those row indices of `blocks`.
    """
    device = torch.device(device)
    total = cfg.total_steps(blocks.shape[1])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student.to(device).train()
    opt = _optimizer(student, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(cfg.warmup * total), total))
    state: dict[str, Any] = {
        "step": 0, "cursor": 0, "order": torch.randperm(len(blocks), generator=gen),
        "losses": [], "evals": [], "best": math.inf, "best_step": None, "bad_evals": 0,
    }  # fmt: skip
    best_weights: dict[str, torch.Tensor] | None = None
    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume and last is not None and last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        gen.set_state(ckpt["data_rng"])
        state = ckpt["state"]
        logger.info("resuming at step %d/%d from %s", state["step"], total, last)
    micro = cfg.batch_size // cfg.grad_accum
    stopped_early = False
    while state["step"] < total and not stopped_early:
        opt.zero_grad(set_to_none=True)
        if state["cursor"] + cfg.batch_size > len(state["order"]):  # a new epoch in a new order
            state["order"], state["cursor"] = torch.randperm(len(blocks), generator=gen), 0
        batch = state["order"][state["cursor"] : state["cursor"] + cfg.batch_size].numpy()
        state["cursor"] += cfg.batch_size
        step_loss = 0.0
        for m in range(cfg.grad_accum):  # gradient accumulation over micro-batches
            idx = np.sort(batch[m * micro : (m + 1) * micro])
            loss = loss_fn(idx) if loss_fn is not None else _loss(student, blocks, idx, targets, cfg, device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {state['step']}")
            (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        state["step"] += 1
        state["losses"].append(step_loss)
        step = state["step"]
        if on_step is not None:
            on_step(step, total, step_loss)
        if validate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
            score = float(validate(student))
            student.train()
            state["evals"].append((step, score))
            if score < state["best"]:
                state["best"], state["best_step"], state["bad_evals"] = score, step, 0
                best_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
                if checkpoint_dir is not None:
                    _save(best_weights, checkpoint_dir / "best.pt")
            else:
                state["bad_evals"] += 1
                stopped_early = bool(cfg.patience) and state["bad_evals"] >= cfg.patience
                if stopped_early:
                    logger.info("early stop at step %d: no better score in %d evaluations", step, cfg.patience)
        if last is not None and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == total):
            _save(
                {
                    "model": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "data_rng": gen.get_state(),
                    "state": state,
                },
                last,
            )
    if state["best_step"] is not None:
        if best_weights is None and checkpoint_dir is not None:  # resumed after the best was saved
            best_weights = torch.load(checkpoint_dir / "best.pt", map_location=device, weights_only=True)
        student.load_state_dict(best_weights)
    student.eval()
    return TrainResult(state["losses"], state["evals"], state["best_step"], state["step"], stopped_early)


def _loss(
    student: torch.nn.Module,
    blocks: np.ndarray,
    idx: np.ndarray,
    targets: TeacherTargets | None,
    cfg: DistillConfig,
    device: torch.device,
) -> torch.Tensor:
    tokens = torch.from_numpy(blocks[idx].astype(np.int64)).to(device)  # (B, L)
    with autocast(device):
        logits = student(input_ids=tokens).logits[:, :-1]  # (B, L-1, V)
    ce = next_token_ce(logits, tokens[:, 1:])
    if targets is None:
        return ce
    t_logp = torch.from_numpy(targets.logprobs[idx]).to(device)  # (B, L-1, K)
    t_idx = torch.from_numpy(targets.indices[idx]).to(device)  # (B, L-1, K)
    return cfg.ce_weight * ce + cfg.kd_weight * topk_kd_loss(logits, t_logp, t_idx, targets.temperature)
