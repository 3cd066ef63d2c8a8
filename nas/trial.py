"""One trial: build the sampled student, distill it briefly from the cached teacher outputs,
evaluate it. Runs inside a Ray worker; knows nothing of Ray or Optuna."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from distill import DistillConfig, PreparedData, distill, evaluate_lm, size_metrics
from search_spaces import DecoderArch, build_model

logger = logging.getLogger(__name__)

CURVE_POINTS = 50


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Everything a worker needs besides the architecture; small and picklable."""

    data: PreparedData
    distill: DistillConfig
    storage_url: str
    study_name: str
    objectives: tuple[str, ...]
    seed: int
    cpus: float
    gpus: float


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def run_trial(arch_dict: dict[str, Any], plan: TrialPlan) -> dict[str, Any]:
    """Distill one architecture and measure it; returns every metric (raises on failure)."""
    torch.set_num_threads(max(1, int(plan.cpus)))
    device = pick_device(plan.gpus)
    arch = DecoderArch.from_dict(arch_dict)
    meta = plan.data.meta
    torch.manual_seed(plan.seed)
    student = build_model(arch, plan.data.teacher_config(), meta["block_length"])
    start = time.perf_counter()
    result = distill(
        student,
        plan.data.blocks("train"),
        plan.distill,
        targets=plan.data.targets("train"),
        seed=plan.seed,
        device=device,
    )
    train_seconds = time.perf_counter() - start
    losses = result.losses
    quality = evaluate_lm(student, plan.data.blocks("eval"), plan.data.targets("eval"), device=device)
    size = size_metrics(student, meta["block_length"], device=device)
    stride = max(1, len(losses) // CURVE_POINTS)
    return {
        **quality,
        **size,
        "train_loss": losses[-1],
        "train_seconds": train_seconds,
        "train_steps": len(losses),
        "loss_curve": losses[::stride],
        "device": str(device),
    }
