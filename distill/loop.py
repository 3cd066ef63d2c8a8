"""The training loop shared by the brief trial run, the full run and the demo teacher.

A plain loop you can read top to bottom: seeded sampling of item indices, AdamW, linear
warmup then cosine decay, gradient clipping, gradient accumulation. The loss function's
forward passes run in the precision of the enclosing `distill.precision.computing_in` block;
weights and optimizer state stay fp32. It knows nothing of language models: a model, a
budget, how many real tokens each training item holds, and a loss function of a
micro-batch's item indices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import InputError
from distill.files import file_written_whole
from distill.losses import describe_diagnostics, take_diagnostics

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"  # in a run's checkpoint folder: what `resume` continues from
TRAINING_STATE = "distillation_projections"
"""The attribute of a student holding modules the loss trains with it (`distill.intermediate`):
optimized, checkpointed and resumed with the student, removed when the run ends."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """A training budget and its optimizer: the `[brief]` (brief trial run) and `[full]`
    (`nas distill`) sections of a study spec. The loss lives in `[loss]`."""

    steps: int = 100
    """optimizer steps (ignored when `tokens` is set)"""
    tokens: int = 0
    """budget in real (unpadded) training tokens; when > 0 the run takes as many steps as fit"""
    batch_size: int = 16
    """items (token blocks, paragraphs) per step"""
    grad_accum: int = 1
    """micro-batches per step (batch_size must divide by it), for batches that do not fit"""
    lr: float = 1e-3
    """peak learning rate of AdamW"""
    warmup: float = 0.1
    """share of the steps spent warming the learning rate up linearly, then cosine decay"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """clip the gradient norm to this value (0: no clipping)"""
    eval_every: int = 0
    """validate every this many steps, keeping the best weights (0: never)"""
    checkpoint_every: int = 0
    """save a resumable checkpoint every this many steps (0: never)"""
    patience: int = 0
    """stop after this many validations without improvement (0: never stop early)"""
    on_policy: float = 0.0
    """share of the batches on the student's own outputs (GKD's lambda, Agarwal et al., ICLR
    2024): the student samples them from the batch's inputs and a live teacher scores them;
    the divergence terms alone count there"""
    workers: int = 1
    """data-parallel workers of a full run (`[full]` only; `nas distill --workers N`): a Ray
    Train job of that many processes, each with its share of every batch (batch_size must
    divide by workers x grad_accum): the same global batch as one process"""

    def __post_init__(self) -> None:
        if self.steps < 1 and self.tokens < 1:
            raise ValueError(f"steps: must be >= 1 (or set tokens), got {self.steps}")
        if self.tokens < 0:
            raise ValueError(f"tokens: must be >= 0, got {self.tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup: must be in [0, 1), got {self.warmup}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"grad_accum: must be >= 1 and divide batch_size ({self.batch_size}), got {self.grad_accum}"
            )
        if self.workers < 1 or self.batch_size % (self.workers * self.grad_accum):
            raise ValueError(
                f"workers: must be >= 1 and workers x grad_accum ({self.grad_accum}) must divide batch_size "
                f"({self.batch_size}), got {self.workers}"
            )
        if min(self.eval_every, self.checkpoint_every, self.patience) < 0:
            raise ValueError("eval_every/checkpoint_every/patience: must be >= 0")
        if not 0.0 <= self.on_policy <= 1.0:
            raise ValueError(f"on_policy: a share of the batches, between 0 and 1, got {self.on_policy}")

    def total_steps(self, lengths: np.ndarray, seed: int = 0) -> int:
        """Optimizer steps of the run: `steps`, or for a `tokens` budget the most steps whose
        real tokens (`lengths`: per training item) fit in it, in the loop's own data order."""
        if self.tokens <= 0:
            return self.steps
        if not lengths.any():
            raise InputError("data: the training items hold no tokens; a tokens budget cannot be met")
        sampler, used, steps = Sampler(len(lengths), seed), 0, 0
        while True:
            used += int(lengths[sampler.next(self.batch_size)].sum())
            if used > self.tokens:
                return max(1, steps)
            steps += 1


# `nas distill` validates and checkpoints by default; a brief trial run does neither.
FULL_RUN = {"steps": 2000, "warmup": 0.05, "eval_every": 100, "checkpoint_every": 100}


class Sampler:
    """Seeded epochs of shuffled item indices, taken batch after batch; its state is part of a
    checkpoint, so that a resumed run sees the same data in the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.gen)
        self.cursor = 0

    def next(self, size: int) -> np.ndarray:
        if self.cursor + size > len(self.order):  # a new epoch in a new order
            self.order, self.cursor = torch.randperm(self.n, generator=self.gen), 0
        batch = self.order[self.cursor : self.cursor + size].numpy()
        self.cursor += size
        return batch

    def state(self) -> dict[str, Any]:
        return {"data_rng": self.gen.get_state(), "order": self.order, "cursor": self.cursor}

    def load(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["data_rng"])
        self.order, self.cursor = state["order"], state["cursor"]


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


@dataclasses.dataclass
class TrainResult:
    """What a run did: per-step losses, (step, validation score) pairs, the best step, and
    what its loss terms noted of themselves (`distill.losses.take_diagnostics`) from one
    validation to the next and at the end, as (step, notes) pairs: of this process's share of
    the batches (worker 0's, with several), and since the resume for a resumed run (checkpoints
    do not keep them)."""

    losses: list[float]
    evals: list[tuple[int, float]]
    best_step: int | None
    steps: int
    stopped_early: bool
    diagnostics: list[tuple[int, dict[str, dict[str, float]]]] = dataclasses.field(default_factory=list)


def _optimizer(student: torch.nn.Module, budget: Budget) -> torch.optim.Optimizer:
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=budget.lr,
        betas=(0.9, 0.95),
    )


class Workers:
    """The data-parallel workers of one run, as `torch.distributed` knows them (Ray Train sets
    the process group up): every worker draws the same global batch and trains on its own
    contiguous share of each of its micro-batches (the micro-batches of one process); `model`,
    the `DistributedDataParallel` module the loss runs in,
    averages the gradients. Worker 0 validates (the others take its score), calls `on_step`
    and writes the checkpoints, which hold every worker's random state. One process: `SOLO`."""

    def __init__(self, rank: int = 0, world: int = 1, model: Any = None, device: torch.device | str = "cpu") -> None:
        self.rank, self.world, self.model = rank, world, model
        self.device = torch.device(device)  # where this worker's collectives put their tensors (NCCL: the GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def loss(self, loss_fn: Callable[..., torch.Tensor], micro_batch: np.ndarray) -> torch.Tensor:
        """The loss of this worker's contiguous share of a (sorted) micro-batch of the whole
        run; with several workers `loss_fn` also gets the whole micro-batch, whose indices
        decide what every worker must decide alike (whether it is on-policy)."""
        if self.world == 1:
            return loss_fn(micro_batch)
        n = len(micro_batch) // self.world
        return loss_fn(micro_batch[self.rank * n : (self.rank + 1) * n], micro_batch)

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every worker's loss is finite (so that all stop together when one is not)."""
        finite = bool(torch.isfinite(loss))
        if self.world == 1:
            return finite
        flag = torch.tensor([float(finite)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def accumulating(self, last: bool) -> Any:
        """The context of a micro-batch's backward pass: gradients are averaged after the last."""
        return self.model.no_sync() if self.model is not None and not last else contextlib.nullcontext()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world

    def agree(self, compute: Callable[[], Any]) -> Any:
        """`compute()` on worker 0, its value on every worker."""
        if self.world == 1:
            return compute()
        box = [compute() if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gathered(self, value: Any) -> Any:
        """`value` (one process), or every worker's, in rank order (its random state)."""
        if self.world == 1:
            return value
        states: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(states, value)
        return states

    def own(self, states: Any) -> torch.Tensor:
        if isinstance(states, list):
            if len(states) != self.world:
                raise InputError(f"--resume: the checkpoint was made by {len(states)} workers, this run has {self.world}")
            return states[self.rank]
        return states


SOLO = Workers()


def save_whole(obj: Any, path: Path) -> None:
    """`torch.save` into `path`, published whole."""
    with file_written_whole(path) as tmp:  # a kill mid-write never leaves a torn checkpoint
        torch.save(obj, tmp)


def train(
    student: torch.nn.Module,
    budget: Budget,
    loss_fn: Callable[..., torch.Tensor],
    lengths: np.ndarray,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
    validate: Callable[[torch.nn.Module], float] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    workers: Workers = SOLO,
) -> TrainResult:
    """Train `student` for `budget`: `loss_fn(indices)` is the loss of the training items at
    those (sorted) indices, `lengths` (N,) the real tokens of each of the N training items.

    Raises FloatingPointError on a non-finite loss. `on_step(step, total, loss)` is called
    after every optimizer step.

    The long-run manners, all off for a brief run: `validate(student)` (lower is better) every
    budget.eval_every steps, keeping the best weights, which the student holds at the end, and
    stopping after budget.patience evaluations without improvement; a checkpoint of everything
    the run depends on (weights, optimizer, schedule, RNG, data position) in `checkpoint_dir`
    every budget.checkpoint_every steps, from which `resume=True` continues the same run.
    With several `workers`, each runs this with its share of every batch (see `Workers`).
    """
    device = torch.device(device)
    total = budget.total_steps(lengths, seed)
    sampler = Sampler(len(lengths), seed)
    torch.manual_seed(seed + workers.rank)
    student.to(device).train()
    opt = _optimizer(student, budget)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(budget.warmup * total), total))
    run = _Run(student, opt, sched, sampler, device, workers)
    state: dict[str, Any] = {
        "step": 0, "losses": [], "evals": [], "best": math.inf, "best_step": None, "bad_evals": 0,
    }  # fmt: skip
    best_weights: dict[str, torch.Tensor] | None = None
    last = checkpoint_dir / LAST_CHECKPOINT if checkpoint_dir else None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume and last is not None and last.exists():
        state = run.load(last)
        logger.info("resuming at step %d/%d from %s", state["step"], total, last)
    stopped_early = False
    diagnostics: list[tuple[int, dict[str, dict[str, float]]]] = []
    take_diagnostics()  # what earlier runs in this process noted is theirs
    while state["step"] < total and not stopped_early:
        step_loss = run.step(loss_fn, budget, state["step"])
        state["step"] += 1
        state["losses"].append(step_loss)
        step = state["step"]
        if on_step is not None and workers.main:
            on_step(step, total, step_loss)
        if validate is not None and budget.eval_every and (step % budget.eval_every == 0 or step == total):
            _diagnose(diagnostics, step, workers.main)
            improved = _judge(state, step, workers.agree(lambda: float(validate(student))), budget.patience)
            student.train()
            if improved:
                best_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
                if checkpoint_dir is not None and workers.main:
                    save_whole(best_weights, checkpoint_dir / "best.pt")
            stopped_early = bool(budget.patience) and state["bad_evals"] >= budget.patience
        if last is not None and budget.checkpoint_every and (step % budget.checkpoint_every == 0 or step == total):
            checkpoint = run.checkpoint(state)  # every worker: their random states are gathered
            if workers.main:
                save_whole(checkpoint, last)
    if not diagnostics or diagnostics[-1][0] != state["step"]:
        _diagnose(diagnostics, state["step"], workers.main)
    if state["best_step"] is not None:
        if best_weights is None and checkpoint_dir is not None:  # resumed after the best was saved
            best_weights = torch.load(checkpoint_dir / "best.pt", map_location=device, weights_only=True)
        student.load_state_dict(best_weights)
    if hasattr(student, TRAINING_STATE):  # training-only modules (projections) end with the run
        delattr(student, TRAINING_STATE)
    student.eval()
    return TrainResult(state["losses"], state["evals"], state["best_step"], state["step"], stopped_early, diagnostics)


def _diagnose(diagnostics: list[tuple[int, dict[str, dict[str, float]]]], step: int, main: bool) -> None:
    """Keep what the loss terms noted since the last call, and log it (on worker 0)."""
    notes = take_diagnostics()
    if notes:
        diagnostics.append((step, notes))
        if main and describe_diagnostics(notes):
            logger.info("step %d: %s", step, describe_diagnostics(notes))


def _judge(state: dict[str, Any], step: int, score: float, patience: int) -> bool:
    """Record a validation `score` (lower is better); whether it is the best so far."""
    state["evals"].append((step, score))
    if score < state["best"]:
        state["best"], state["best_step"], state["bad_evals"] = score, step, 0
        return True
    state["bad_evals"] += 1
    if patience and state["bad_evals"] >= patience:
        logger.info("early stop at step %d: no better score in %d evaluations", step, patience)
    return False


@dataclasses.dataclass
class _Run:
    """What a run steps and checkpoints: the student, its optimizer and schedule, the data order."""

    student: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    sampler: Sampler
    device: torch.device
    workers: Workers = SOLO

    def step(self, loss_fn: Callable[..., torch.Tensor], budget: Budget, step: int) -> float:
        """One optimizer step over `budget.grad_accum` micro-batches (this worker's share of
        each); returns its loss (over the whole batch)."""
        self.opt.zero_grad(set_to_none=True)
        batch = self.sampler.next(budget.batch_size)
        micro = budget.batch_size // budget.grad_accum
        step_loss = 0.0
        for m in range(budget.grad_accum):  # gradient accumulation over micro-batches
            with self.workers.accumulating(last=m == budget.grad_accum - 1):
                loss = self.workers.loss(loss_fn, np.sort(batch[m * micro : (m + 1) * micro]))
                if not self.workers.all_finite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}")
                (loss / budget.grad_accum).backward()
            step_loss += loss.item() / budget.grad_accum
        if budget.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), budget.grad_clip)
        self.opt.step()
        self.sched.step()
        return self.workers.mean(step_loss)

    def checkpoint(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.student.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "torch_rng": self.workers.gathered(torch.get_rng_state()),
            "cuda_rng": self.workers.gathered(torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None),
            "sampler": self.sampler.state(),
            "state": state,
        }

    def load(self, path: Path) -> dict[str, Any]:
        """Continue from the checkpoint at `path`; returns the run's state there."""
        # RNG and sampler states live on the CPU; weights and optimizer state move to the model.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if "sampler" not in ckpt:
            raise InputError(f"--resume: {path} was written by an earlier version; start again without --resume")
        self.student.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(self.workers.own(ckpt["torch_rng"]))
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(self.workers.own(ckpt["cuda_rng"]), self.device)
        self.sampler.load(ckpt["sampler"])
        return ckpt["state"]
