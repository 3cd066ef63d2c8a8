"""What one distillation run trains, built one way for a search's brief trial and for the full
run of a picked architecture: the student, seeded, and its loss over the teachers' outputs
(cached once per study, or a live teacher scoring the student's own samples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from distill.objective import LossConfig, make_loss
from distill.teacher_outputs import on_policy_teacher, study_teachers

if TYPE_CHECKING:
    from distill.cache import PreparedData
    from distill.tasks.base import Task


def build_student(task: Task, arch: dict[str, Any], data: PreparedData, device: torch.device, seed: int) -> torch.nn.Module:
    """The student of architecture `arch`, its random weights drawn from `seed`."""
    torch.manual_seed(seed)
    return task.build_student(arch, data, device)


def build_loss(
    task: Task,
    student: torch.nn.Module,
    arch: dict[str, Any],
    data: PreparedData,
    loss: LossConfig,
    on_policy: float,
    device: torch.device,
    others: tuple[PreparedData, ...] = (),
) -> Callable[..., torch.Tensor]:
    """The loss of `student` on training items: the study's teachers (`data`'s, then `others`'),
    and on an `on_policy` share of batches a live teacher scoring the student's samples."""
    teachers = study_teachers(task, data, loss, device, others)
    live = on_policy_teacher(task, data, loss, device, on_policy)
    return make_loss(task, student, data, loss, teachers, device, on_policy, live, arch)


__all__ = ["build_loss", "build_student"]
