"""Tasks: one module each (with what only they use, such as `pairs` for translation), one
registry. The only place that knows a task by its name."""

from __future__ import annotations

from distill.errors import InputError
from distill.tasks import causal_lm, embedding, translation
from distill.tasks.base import Batch, CardParts, Metric, OutputArray, Task, Teacher, format_metric, quality_metrics

TASKS: dict[str, Task] = {t.name: t for t in (causal_lm.TASK, embedding.TASK, translation.TASK)}
DEFAULT_TASK = causal_lm.TASK.name


def get_task(name: str) -> Task:
    """The registered task `name`."""
    if name not in TASKS:
        raise InputError(f"study.task: unknown {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]


def task_for_metrics(names: list[str]) -> Task:
    """The task whose metrics hold every one of `names` (studies stored without their task)."""
    return next((t for t in TASKS.values() if set(names) <= {m.name for m in t.metrics}), TASKS[DEFAULT_TASK])


__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "Batch",
    "CardParts",
    "Metric",
    "OutputArray",
    "Task",
    "Teacher",
    "format_metric",
    "get_task",
    "quality_metrics",
    "task_for_metrics",
]
