"""The command layer: what `nas` can do, as functions that take a study spec and return a typed
result, or raise the one-line `InputError` of bad input. The command line prints these results;
the web service's jobs record them as data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.errors import InputError
from nas.spec import StudySpec

Progress = Callable[[dict[str, Any]], None]
"""where a run's progress goes: a dict per finished trial (`event` "trial"), per full-run step
("step")"""
StepSink = Callable[[int, int, float], None]
"""a full run's step, total steps and loss, as they come"""


@dataclasses.dataclass(frozen=True)
class FrontResult:
    """The study's Pareto front as rows (`nas.pareto.front_rows`) and as `nas pareto --json` text."""

    study: str
    rows: list[dict[str, Any]]
    json: str
    table: str
    """the front as `nas pareto` prints it"""


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A finished (or already complete) search."""

    study: str
    evaluated: int
    """distinct architectures the study holds (trained to the end, or stopped at a rung)"""
    target: int
    front_size: int
    counts: dict[str, int]
    """how its architectures ended (`nas.study.trial_counts`)"""
    report: str | None
    """the HTML report written, if any"""


@dataclasses.dataclass(frozen=True)
class DistillResult:
    """A finished full run of one trial's architecture."""

    trial: int
    export: str
    """the `save_pretrained` folder, with its model card"""
    command: str
    """the command that reproduces this export"""
    metrics: dict[str, Any]
    """its quality on the held-out split and its size"""
    brief: dict[str, Any]
    """the trial's quality after the search's brief run"""
    teacher_metrics: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RankCheckResult:
    """How well the study's brief runs rank its full runs (`nas.rank_check.measure`'s record)."""

    study: str
    measurement: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReportResult:
    report: str


def search(
    spec: StudySpec,
    *,
    trials: int | None = None,
    address: str | None = None,
    report: bool = True,
    on_progress: Progress | None = None,
) -> SearchResult:
    """Run or continue the study's search until it holds `trials` architectures (default the
    spec's), then write its report (unless `report` is False)."""
    from nas.report import write_report
    from nas.search import run_search
    from nas.study import distinct_complete, distinct_evaluated, front_trials, trial_counts

    if trials is not None and trials < 1:
        raise InputError(f"--trials: must be >= 1, got {trials}")
    study = run_search(spec, trials=trials, address=address, on_progress=on_progress)
    written = write_report(study, spec.out_dir / "report.html") if report and distinct_complete(study) else None
    return SearchResult(
        study=spec.name,
        evaluated=len(distinct_evaluated(study)),
        target=trials or spec.study.trials,
        front_size=len(front_trials(study)),
        counts=trial_counts(study),
        report=str(written) if written else None,
    )


def distill(
    spec: StudySpec,
    *,
    trial: int | None = None,
    best: str | None = None,
    max_params: float | None = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    command: str = "",
    on_step: StepSink | None = None,
    address: str | None = None,
    runtime: tuple[str, ...] = (),
) -> DistillResult:
    """Fully distill trial `trial`, or the front's best at quality metric `best` within
    `max_params`, and export it (with `[full] workers` > 1: on Ray Train workers, on the
    cluster at `address` or a Ray of this machine's own), with the edge runtime's files at
    the precisions `runtime` ("fp32", "int8") beside it."""
    from distill.tasks import quality_metrics
    from nas.full import full_distill, select_trial
    from nas.study import StudyRecord, load_existing_study
    from nas.study._record import TEACHER_RUNTIME

    if address is not None and spec.full.workers < 2:
        raise InputError(f"--address: a full run goes to a Ray cluster as workers: give --workers 2 or more (full.workers is {spec.full.workers})")
    study = load_existing_study(spec)
    picked = select_trial(study, number=trial, best=best, max_params=max_params, metrics=quality_metrics(spec.task))
    record = full_distill(
        spec,
        picked,
        study,
        resume=resume,
        restart=restart,
        overwrite=overwrite,
        command=command,
        on_step=on_step,
        address=address,
        runtime_files=runtime,
    )
    return DistillResult(
        trial=picked.number,
        export=record["export"],
        command=command,
        metrics=record["metrics"],
        brief=record["brief"],
        teacher_metrics={**StudyRecord(study).teacher_metrics, **record.get(TEACHER_RUNTIME, {})},
    )


def rank_check(
    spec: StudySpec,
    *,
    trials: int = 8,
    stopped: int = 0,
    overwrite: bool = False,
    restart: bool = False,
    command: Callable[[int], str] = lambda number: "",
    steps: Callable[[int], Any] | None = None,
) -> RankCheckResult:
    """Fully distill `trials` trials across the brief-quality range and `stopped` trials the
    scheduler stopped at a rung (a killed run of one is continued unless `restart`) and
    measure how well brief runs rank full runs, and what stopping cost. `command(n)`:
    what reproduces trial n's export; `steps(n)`: a step sink for trial n's run (closed after
    it, where it has `close`)."""
    from nas.full import full_distill, has_checkpoint
    from nas.rank_check import measure
    from nas.study import load_existing_study

    if trials < 3:
        raise InputError(f"--trials: at least 3 trials are needed to rank, got {trials}")
    study = load_existing_study(spec)

    def distill_one(trial: Any) -> dict[str, Any]:
        sink = steps(trial.number) if steps is not None else None
        resume = has_checkpoint(spec, trial.number) and not restart
        try:
            return full_distill(
                spec, trial, study, resume=resume, restart=restart, overwrite=overwrite, command=command(trial.number), on_step=sink
            )
        finally:
            getattr(sink, "close", lambda: None)()

    return RankCheckResult(spec.name, measure(spec, study, trials, distill_one=distill_one, overwrite=overwrite, stopped=stopped))


def pareto(spec: StudySpec) -> FrontResult:
    """The stored study's Pareto front."""
    from nas.study import load_existing_study

    return _front(load_existing_study(spec))


def _front(study: Any) -> FrontResult:
    from nas.pareto import front_json, front_rows, front_table

    return FrontResult(study.study_name, front_rows(study), front_json(study), front_table(study))


def report(spec: StudySpec, *, out: Path | None = None, color_by: str = "front") -> ReportResult:
    """Write the study's HTML report (default `studies/<name>/report.html`)."""
    from nas.report import write_report
    from nas.study import load_existing_study

    study = load_existing_study(spec)
    try:
        return ReportResult(str(write_report(study, out or spec.out_dir / "report.html", color_by)))
    except ValueError as exc:
        raise InputError(str(exc)) from None


__all__ = [
    "DistillResult",
    "RankCheckResult",
    "FrontResult",
    "Progress",
    "ReportResult",
    "SearchResult",
    "distill",
    "rank_check",
    "pareto",
    "report",
    "search",
]
