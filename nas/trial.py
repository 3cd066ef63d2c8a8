"""One trial, for every task: build the sampled student, distill it briefly from the study's
teacher outputs, evaluate and measure it. Runs inside a Ray worker; knows nothing of Ray or
Optuna."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from distill import Budget, LossConfig, PreparedData, distill, make_loss, study_teachers
from distill.tasks import get_task

logger = logging.getLogger(__name__)

CURVE_POINTS = 50
# What a trial stores besides its task's metrics (Optuna user attributes).
TRIAL_ATTRS = ("arch", "arch_short", "duplicate_of", "train_loss", "train_seconds", "train_steps", "loss_curve", "device")


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Everything a worker needs besides the architecture; small and picklable."""

    task: str
    data: PreparedData
    budget: Budget
    loss: LossConfig
    storage_url: str
    study_name: str
    objectives: tuple[str, ...]
    seed: int
    cpus: float
    gpus: float


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def recorded(task_name: str) -> tuple[str, ...]:
    """Every attribute a trial of this task stores: its metrics and the trial's own."""
    return (*TRIAL_ATTRS, *(m.name for m in get_task(task_name).metrics))


def run_trial(arch: dict[str, Any], plan: TrialPlan) -> dict[str, Any]:
    """Distill one architecture and measure it; returns every metric (raises on failure)."""
    torch.set_num_threads(max(1, int(plan.cpus)))
    device = pick_device(plan.gpus)
    task, data = get_task(plan.task), plan.data
    torch.manual_seed(plan.seed)
    student = task.build_student(arch, data, device)
    loss = make_loss(task, student, data, plan.loss, study_teachers(task, data, plan.loss, device), device)
    start = time.perf_counter()
    result = distill(student, plan.budget, loss, task.lengths(data, "train"), seed=plan.seed, device=device)
    train_seconds = time.perf_counter() - start
    stride = max(1, len(result.losses) // CURVE_POINTS)
    return {
        **task.evaluate(student, data, "eval", device),
        **task.size(student, data, device),
        "train_loss": result.losses[-1],
        "train_seconds": train_seconds,
        "train_steps": len(result.losses),
        "loss_curve": result.losses[::stride],
        "device": str(device),
    }
