"""What the REST API takes and answers, as pydantic models: OpenAPI (`/openapi.json`, `/docs`)
documents each from here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchRequest(BaseModel):
    """Start (or continue) a study's search, as `nas search SPEC KEY=VALUE... --trials N`."""

    model_config = ConfigDict(extra="forbid")
    spec: str = Field(max_length=200, description="a .toml study spec in the studies folder, e.g. demo.toml")
    overrides: list[str] = Field(
        default=[], max_length=50, description="KEY=VALUE settings over the spec's, e.g. brief.steps=50"
    )
    trials: int | None = Field(default=None, ge=1, le=100_000, description="the total number of architectures")


class DistillRequest(BaseModel):
    """Fully distill one trial, as `nas distill SPEC --trial N` (or `--best METRIC --max-params P`)."""

    model_config = ConfigDict(extra="forbid")
    trial: int | None = Field(default=None, ge=0, description="the trial number")
    best: str | None = Field(
        default=None, max_length=64, description="instead of trial: the front's best at this quality metric"
    )
    max_params: float | None = Field(default=None, gt=0, description="with best: at most this many parameters")
    overrides: list[str] = Field(default=[], max_length=50, description="KEY=VALUE settings, e.g. full.steps=500")
    resume: bool = Field(default=False, description="continue an unfinished run from its last checkpoint")
    restart: bool = Field(default=False, description="discard an unfinished run's checkpoints")
    overwrite: bool = Field(default=False, description="replace an earlier export of this trial")
    runtime: Literal["onnx"] | None = Field(
        default=None, description="also export the student for ONNX Runtime and measure it beside the teacher there"
    )
    int8: bool = Field(default=False, description="with runtime: also its int8 model (weights quantized)")

    @model_validator(mode="after")
    def _one_pick(self) -> DistillRequest:
        if (self.trial is None) == (self.best is None):
            raise ValueError("give either trial (a number) or best (a quality metric)")
        if self.max_params is not None and self.best is None:
            raise ValueError("max_params goes with best")
        if self.resume and self.restart:
            raise ValueError("resume and restart exclude each other")
        if self.int8 and self.runtime is None:
            raise ValueError("int8 goes with runtime")
        return self


class Job(BaseModel):
    """A search or a full run started by the service."""

    model_config = ConfigDict(extra="allow")
    id: str
    study: str
    kind: str = Field(description="search or distill")
    state: str = Field(description="starting, running, completed, failed, stopped or interrupted")
    args: list[str] = Field(description="the `nas` command line's arguments it runs")
    command: str = Field(description="the command that does the same from a terminal")
    trial: int | None = Field(default=None, description="the trial a full run distills")
    created: float
    progress: dict[str, Any] = Field(
        description="the last progress figures: a finished trial (event trial) or a step (event step), eta_s counted to now"
    )
    error: str | None = Field(default=None, description="why a failed job failed")
    result: dict[str, Any] | None = Field(
        default=None,
        description="how a finished job ended, as the command layer returned it (`nas.commands`): a search's "
        "SearchResult (study, evaluated, target, front_size, counts, report), a full run's DistillResult (trial, export, "
        "command, metrics, brief, teacher_metrics)",
    )
    log: list[str] | None = Field(default=None, description="the end of its log (one job's reading only)")


class Problem(BaseModel):
    error: str = Field(description="one line naming the key at fault and what is allowed")


class MetricInfo(BaseModel):
    name: str
    label: str = Field(description="what it is, in words")
    kind: str = Field(description="quality or size (empty for a metric the task does not declare)")
    direction: str = Field(description="min or max: which way is better")
    objective: bool = Field(description="whether the study optimizes it")


class HypervolumePoint(BaseModel):
    trial: int
    at: float = Field(description="when the trial completed (seconds since the epoch)")
    hypervolume: float = Field(description="of the feasible front once this trial completed")


class TrialRow(BaseModel):
    """One trial as the study's table shows it."""

    number: int
    state: str = Field(description="complete, infeasible, stopped at a rung, not trained, repeat, failed, running")
    front: bool = Field(description="on the Pareto front")
    arch: dict[str, Any] | None
    arch_short: str
    recipe: dict[str, Any] | None = Field(description="how it was taught, where the spec searches the recipe")
    metrics: dict[str, int | float]
    formatted: dict[str, str] = Field(description="the metrics as the task prints them")
    reason: str | None = Field(description="why it failed, was not trained or was stopped")
    duplicate_of: int | None
    started: float | None
    completed: float | None
    distilled: bool = Field(description="fully distilled")


class StudySummary(BaseModel):
    """A study of the folder: its spec, and what its storage holds once it was searched."""

    model_config = ConfigDict(extra="allow")
    name: str
    spec: str = Field(description="the spec file in the studies folder")
    error: str | None = Field(default=None, description="why the spec or its storage cannot be read")
    task: str | None = None
    running_jobs: list[Job] = []
    target: int | None = Field(default=None, description="architectures the study (or its running search) aims at")
    searched: bool = False
    teacher: str | None = None
    evaluated: int = 0
    front_size: int = 0
    teacher_metrics: dict[str, Any] = {}
    teacher_formatted: dict[str, str] = {}
    objectives: list[str] = []
    directions: list[str] = []
    metrics: list[MetricInfo] = []
    counts: dict[str, int] = Field(default={}, description="how its architectures ended")
    trials_total: int = 0


class Study(StudySummary):
    """A study with every trial and its hypervolume after each."""

    trials: list[TrialRow] = []
    hypervolume: list[HypervolumePoint] = []


class FullRun(BaseModel):
    """The record of a trial's full distillation (`nas distill`)."""

    model_config = ConfigDict(extra="allow")
    export: str
    metrics: dict[str, Any]
    formatted: dict[str, str]
    has_card: bool


class TrialDetail(TrialRow):
    """One trial in full."""

    loss_curve: list[float]
    train_steps: int | None
    rungs: list[dict[str, Any]] = Field(description="its quality at each rung of multi-fidelity")
    eval_sets: dict[str, dict[str, float]] = Field(description="its quality on each extra evaluation set")
    eval_sets_formatted: dict[str, dict[str, dict[str, str]]] = Field(
        default={}, description="per extra evaluation set, its brief run's, full run's and the teacher's quality, formatted"
    )
    teacher_metrics: dict[str, Any]
    full: FullRun | None


class Card(BaseModel):
    export: str = Field(description="the exported folder")
    markdown: str = Field(description="its README.md, the model card")


class FrontRow(BaseModel):
    trial: int
    arch: dict[str, Any] | None
    arch_short: str
    recipe: dict[str, Any] | None
    objectives: dict[str, int | float]
    metrics: dict[str, Any]
    eval_sets: dict[str, dict[str, float]]
    full: dict[str, Any] | None = Field(description="the full run's metrics, export and eval sets, once distilled")


class Front(BaseModel):
    """The Pareto front, as `nas pareto --json` prints it."""

    study: str
    task: str
    directions: list[str]
    teacher: str | None
    teacher_metrics: dict[str, Any] | None
    teacher_eval_sets: dict[str, dict[str, float]]
    front: list[FrontRow]
