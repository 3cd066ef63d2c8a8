"""What every route of the service shares: the studies folder's catalog and jobs, the lock under
which a job is checked and started, the templates. One `Service` per app (`app.state`), handed
to routes through the `service` dependency."""

from __future__ import annotations

import dataclasses
import shlex
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.templating import Jinja2Templates

from distill.errors import InputError
from nas.service.catalog import Catalog, NotFound, study_json, teacher_label
from nas.service.jobs import ACTIVE, Jobs
from nas.service.models import Job
from nas.study.locks import writer_of

HERE = Path(__file__).parent
SERVER_KEYS = ("study.storage",)
"""spec keys a request may not set: the server reads only the storages its specs name"""


@dataclasses.dataclass
class Service:
    """The app's shared state over the specs in `studies`; `address`: a Ray cluster searches join."""

    studies: Path
    address: str | None = None
    catalog: Catalog = dataclasses.field(init=False)
    jobs: Jobs = dataclasses.field(init=False)
    starting: threading.Lock = dataclasses.field(init=False, default_factory=threading.Lock)
    """checking that nobody holds a study and starting a job are one step"""
    templates: Jinja2Templates = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.studies)
        self.jobs = Jobs(self.studies)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        from nas.service.routes.assets import static_version

        self.templates.env.globals["static"] = lambda name: f"/static/{name}?v={static_version(name)}"

    def study(self, name: str) -> tuple[str, Any, Any]:
        """The spec file, spec and stored study (None before its search) of study `name`."""
        file, spec = self.catalog.spec_of(name)
        return file, spec, self.catalog.study(spec)

    def searched(self, name: str) -> tuple[Any, Any]:
        """The spec and stored study of study `name`: 404 before its first search."""
        _, spec, study = self.study(name)
        if study is None:
            raise NotFound(f"study {name!r} has not been searched yet")
        return spec, study

    def about(self, name: str, file: str, spec: Any, running: list[dict[str, Any]], study: Any, trials: bool) -> dict[str, Any]:
        """A study as the API gives it; with `trials`, every trial and the hypervolume."""
        mine = [job_view(j).model_dump() for j in running if j.get("study") == name]
        target = max([spec.study.trials, *[j.get("trials") or 0 for j in mine if j["kind"] == "search"]])
        row = {"name": name, "spec": file, "task": spec.study.task, "running_jobs": mine, "target": target}
        if study is None:
            empty = {"trials": [], "hypervolume": [], "metrics": [], "counts": {}} if trials else {}
            return row | {"searched": False, "teacher": teacher_label(spec), "evaluated": 0, "front_size": 0} | empty
        s = study_json(study, with_trials=trials)
        return row | s | {"searched": True, "teacher": s["teacher"] or teacher_label(spec), "target": max(target, s["evaluated"])}

    def refuse_busy(self, spec: Any, role: str, doing: str, study: str, trial: int | None = None) -> None:
        """409 when a job of this service or any run on this machine holds `role` of the study."""
        for j in self.jobs.running(study):
            if j["kind"] == role.split("-")[0] and (trial is None or j.get("trial") == trial):
                raise HTTPException(409, f"{doing} by job {j['id']}; stop it first")
        holder = writer_of(spec, role)
        if holder is not None:
            raise HTTPException(409, f"{doing} by {holder}; wait for it to end or stop it")

    def job_folder(self, job_id: str) -> Path:
        folder = self.jobs.find(job_id)
        if folder is None:
            raise NotFound(f"no job {job_id!r}")
        return folder

    def spec_arg(self, file: str) -> str:
        """A spec as the job's command names it: relative to the folder above the studies."""
        return f"{self.studies.name}/{file}"


def service(request: Request) -> Service:
    """The dependency that gives a route the app's `Service`."""
    return request.app.state.service


def check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if len(item) > 500 or "=" not in item or item.startswith("-"):
            raise InputError(f"overrides: {item[:80]!r} is not KEY=VALUE (e.g. brief.steps=50)")
        if item.split("=", 1)[0].strip() in SERVER_KEYS:
            raise InputError(f"overrides: {item.split('=', 1)[0]} is set by the spec file, not by a request")


def job_view(job: dict[str, Any], log: list[str] | None = None) -> Job:
    """A job for the API: what was asked and its state, with the progress's ETA counted down
    to now, the command that reproduces it and (`log`) the end of its log."""
    progress = dict(job.get("progress") or {})
    if job.get("state") in ACTIVE and progress.get("eta_s") is not None and progress.get("at"):
        progress["eta_s"] = max(0.0, round(progress["eta_s"] - (time.time() - progress["at"]), 1))
    elif job.get("state") not in ACTIVE:
        progress.pop("eta_s", None)
    shown = {k: v for k, v in job.items() if k not in ("progress", "started_ticks")}
    return Job(**shown, command=shlex.join(["nas", *job.get("args", [])]), progress=progress, log=log)
