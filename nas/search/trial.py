"""One trial, for every task: build the sampled student, measure it (and stop there if its
size breaks a constraint), distill it briefly from the study's teacher outputs, reporting its
quality at the rungs of multi-fidelity, evaluate it. Runs inside a Ray worker; knows nothing
of Ray or Optuna."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from distill import Budget, LossConfig, PreparedData, runtime, train
from distill.precision import computing_in, resolve
from distill.run import build_loss, build_student
from distill.tasks import get_task
from distill.tasks.base import GENERATED, scores_and_text
from nas.prepare import pick_device
from nas.recipe import apply_recipe
from nas.spec import Constraints
from nas.study import TRIAL_ATTRS
from nas.study._record import EVAL_SETS, LOSS_CURVE, NOT_TRAINED, PEAK_RSS, PHASE_SECONDS, PRECISION, RUNGS, TRAIN_STEPS

logger = logging.getLogger(__name__)

CURVE_POINTS = 50
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
    rungs: tuple[float, ...] = (1.0,)
    """shares of the budget at which the trial reports its quality (multi-fidelity); the last is 1"""
    size_bounds: Constraints = Constraints()
    """constraints on size metrics: checked before training"""
    evals: dict[str, PreparedData] = dataclasses.field(default_factory=dict)
    """extra evaluation sets (`[[eval]]`), scored at the end"""
    others: tuple[PreparedData, ...] = ()
    """the studies of the spec's other teachers (`[[teacher]]` after the first)"""
    by_temperature: dict[float, tuple[PreparedData, tuple[PreparedData, ...]]] = dataclasses.field(default_factory=dict)
    """with a searchable temperature (`[space.recipe]`): the teachers' studies at each"""
    twin_wait_s: float = 6 * 3600.0
    """the longest a repeated architecture waits for its twin's result before it fails"""
    precision: str = "fp32"
    """`[resources] precision` ("auto" is resolved on the worker's device)"""
    runtime: tuple[str, ...] = ()
    """`[runtime]`: the precisions the trial is measured at in the edge runtime at its end"""


def with_recipe(plan: TrialPlan, recipe: dict[str, Any] | None) -> TrialPlan:
    """The plan of a trial of `recipe` (`[space.recipe]`): its loss and brief budget, and the
    teachers' outputs at its temperature."""
    if not recipe:
        return plan
    loss, budget = apply_recipe(plan.loss, plan.budget, recipe)
    if "temperature" in recipe and recipe["temperature"] not in plan.by_temperature:
        raise ValueError(f"no teacher outputs cached at temperature {recipe['temperature']}")
    data, others = plan.by_temperature.get(loss.params.get("temperature"), (plan.data, plan.others))
    return dataclasses.replace(plan, loss=loss, budget=budget, data=data, others=others)


def recorded(task_name: str) -> tuple[str, ...]:
    """Every attribute a trial of this task stores: its metrics and the trial's own."""
    return (*TRIAL_ATTRS, *(m.name for m in get_task(task_name).metrics))


def rung_steps(total: int, rungs: tuple[float, ...]) -> list[int]:
    """The steps of a `total`-step run at which it reports (distinct, the last is `total`)."""
    return sorted({max(1, min(total, round(share * total))) for share in rungs} | {total})


def plan_stops(plan: TrialPlan) -> list[int]:
    """The steps at which a trial of `plan` reports (its rungs; the last is its whole budget)."""
    lengths = get_task(plan.task).lengths(plan.data, "train")
    return rung_steps(plan.budget.total_steps(lengths, plan.seed), plan.rungs)


def held_out_scores(
    task: Any, student: torch.nn.Module, data: PreparedData, evals: dict[str, PreparedData], device: torch.device
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, list[str]]]:
    """The task's quality metrics of `student` on the study's held-out split and on each extra
    evaluation set, and the text it generated on each ("eval" and the sets' names; empty for
    tasks that generate none)."""
    quality, text = scores_and_text(task.evaluate(student, data, "eval", device))
    texts = {"eval": text} if text is not None else {}
    sets = {}
    for name, extra in evals.items():
        sets[name], text = scores_and_text(task.evaluate(student, extra, "eval", device))
        if text is not None:
            texts[name] = text
    return quality, sets, texts


def run_trial(
    arch: dict[str, Any], plan: TrialPlan, report: Callable[[int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Distill one architecture and measure it; returns every metric (raises on failure).

    A student whose size breaks `plan.size_bounds` is not trained: the result holds its size
    and `not_trained`. Otherwise, with several rungs, `report(rung, metrics)` gets the quality
    and size at every rung before the last; the result's `rungs` lists every rung's step and
    quality, the last one's being the result's own. For tasks that generate text, the result's
    `GENERATED` holds the student's text on each held-out set."""
    torch.set_num_threads(max(1, int(plan.cpus)))
    device = pick_device(plan.gpus)
    with computing_in(resolve(plan.precision, device)) as precision:
        return {**_run_trial(arch, plan, device, report), PRECISION: precision}


def _run_trial(
    arch: dict[str, Any], plan: TrialPlan, device: torch.device, report: Callable[[int, dict[str, Any]], None] | None
) -> dict[str, Any]:
    task, data = get_task(plan.task), plan.data
    phases = Phases()
    with phases("build"):
        student = build_student(task, arch, data, device, plan.seed)
    # The runtime's speed and file size, where an objective or a bound needs them from the
    # first rung on; its quality, at every rung, where an objective is one.
    kinds = {m.name: m.kind for m in task.metrics}
    named = [*(n for n in plan.objectives if kinds[n] == "size"), *(b.metric for b in plan.size_bounds.bounds)]
    early = tuple(p for p in plan.runtime if p in {runtime.precision_of(n) for n in named})
    at_rungs = tuple(p for p in plan.runtime if p in {runtime.precision_of(n) for n in plan.objectives if kinds[n] == "quality"})
    with phases("size"):
        size = task.size(student, data, device)  # of the architecture, not of its weights: known before training
    with phases("runtime"):
        size |= runtime.measure(task, student, data, speed=early)
    missed = plan.size_bounds.missed(size)
    if missed is not None:
        return {**size, NOT_TRAINED: f"infeasible before training: {missed}", "device": str(device), **phases.record()}
    with phases("loss"):
        loss = build_loss(task, student, arch, data, plan.loss, plan.budget.on_policy, device, plan.others)
    lengths = task.lengths(data, "train")
    stops = plan_stops(plan)
    rungs: list[dict[str, Any]] = []

    def at_rung(step: int, total: int, loss_value: float) -> None:
        if step in stops[:-1]:
            with phases("rungs"):
                rungs.append({"step": step, **scores_and_text(task.evaluate(student, data, "eval", device))[0]})
            with phases("runtime"):
                rungs[-1] |= runtime.measure(task, student, data, quality=at_rungs)
            student.train()
            if report is not None:
                report(len(rungs) - 1, {**rungs[-1], **size, RUNGS: list(rungs)})

    start = time.perf_counter()
    result = train(student, plan.budget, loss, lengths, seed=plan.seed, device=device, on_step=at_rung)
    train_seconds = time.perf_counter() - start
    phases.add("train", train_seconds - phases.seconds.get("rungs", 0.0))
    stride = max(1, len(result.losses) // CURVE_POINTS)
    with phases("evaluate"):
        quality, sets, texts = held_out_scores(task, student, data, plan.evals, device)
    with phases("runtime"):  # speed and size of the same graphs, where they were not measured before training
        measured = runtime.measure(task, student, data, tuple(p for p in plan.runtime if p not in early), plan.runtime)
    size |= {k: v for k, v in measured.items() if kinds[k] == "size"}
    quality |= {k: v for k, v in measured.items() if kinds[k] == "quality"}
    return {
        **quality,
        **({EVAL_SETS: sets} if plan.evals else {}),
        **({GENERATED: texts} if texts else {}),
        **size,
        RUNGS: [*rungs, {"step": result.steps, **quality}],
        "train_loss": result.losses[-1],
        "train_seconds": train_seconds,
        TRAIN_STEPS: len(result.losses),
        LOSS_CURVE: result.losses[::stride],
        "device": str(device),
        **phases.record(),
    }


class Phases:
    """Where a trial's time goes (seconds per phase) and the peak memory of its process."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def record(self) -> dict[str, Any]:
        return {PHASE_SECONDS: {k: round(v, 4) for k, v in self.seconds.items()}, PEAK_RSS: peak_rss_mb()}


def peak_rss_mb() -> float:
    """The highest resident memory of this process so far, MiB (a worker Ray reuses: over every
    trial it ran)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, 1)
