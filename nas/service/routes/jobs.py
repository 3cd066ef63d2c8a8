"""Jobs: a search or a full distillation started from the service, run as a child process of
the server (`nas.service.jobs`); listed, read, stopped and resumed here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from distill.errors import InputError
from nas.service.models import DistillRequest, Job, SearchRequest
from nas.service.routes.errors import ERRORS
from nas.service.state import Service, check_overrides, job_view, service

router = APIRouter(prefix="/api", tags=["jobs"])
Svc = Annotated[Service, Depends(service)]


def _cli_words(exc: InputError) -> InputError:
    """The command line's refusal in the API's words (`--max-params` is `max_params`)."""
    text = str(exc)
    for flag, key in (("--max-params", "max_params"), ("--trial", "trial"), ("--best", "best")):
        text = text.replace(flag, key)
    return InputError(text)


@router.post("/searches", status_code=201, summary="Start a search (a job)", responses=ERRORS)
def start_search(request: SearchRequest, svc: Svc) -> Job:
    check_overrides(request.overrides)
    spec = svc.catalog.load(request.spec, request.overrides)
    args = ["search", svc.spec_arg(request.spec), *request.overrides]
    if request.trials is not None:
        args += ["--trials", str(request.trials)]
    if svc.address:
        args += ["--address", svc.address]
    with svc.starting:
        svc.refuse_busy(spec, "search", f"study.name: study {spec.name!r} is being searched", spec.name)
        job = svc.jobs.start(spec.name, spec.out_dir, "search", args, trials=request.trials or spec.study.trials)
    return job_view(job)


@router.post("/studies/{name}/distill", status_code=201, summary="Fully distill a trial (a job)", responses=ERRORS)
def start_distill(name: str, request: DistillRequest, svc: Svc) -> Job:
    from distill.tasks import quality_metrics
    from nas.full import checkpoint_dir, export_dir, has_checkpoint, select_trial

    check_overrides(request.overrides)
    file, _ = svc.catalog.spec_of(name)
    spec = svc.catalog.load(file, request.overrides)
    study = svc.catalog.study(spec)
    if study is None:
        raise InputError(f"study.name: study {name!r} has not been searched yet; start a search first")
    try:
        trial = select_trial(
            study, number=request.trial, best=request.best, max_params=request.max_params, metrics=quality_metrics(spec.task)
        )
    except InputError as exc:
        raise _cli_words(exc) from None
    n = trial.number
    if (export_dir(spec, n) / "config.json").exists() and not request.overwrite:
        raise HTTPException(409, f"overwrite: trial {n} already has an export in {export_dir(spec, n)}; set overwrite to replace it")
    if has_checkpoint(spec, n) and not (request.resume or request.restart):
        raise HTTPException(
            409,
            f"resume: an unfinished run of trial {n} left a checkpoint in {checkpoint_dir(spec, n)}; "
            "set resume to continue it or restart to discard it",
        )
    args = ["distill", svc.spec_arg(file), *request.overrides, "--trial", str(n)]
    args += [f"--{flag}" for flag in ("resume", "restart", "overwrite", "int8") if getattr(request, flag)]
    args += ["--runtime", request.runtime] if request.runtime else []
    with svc.starting:
        svc.refuse_busy(spec, f"distill-{n}", f"trial: trial {n} of study {name!r} is being distilled", name, n)
        job = svc.jobs.start(name, spec.out_dir, "distill", args, trial=n, overrides=request.overrides)
    return job_view(job)


def list_jobs(svc: Service, study: str | None = None) -> list[Job]:
    return [job_view(j) for j in svc.jobs.all() if study in (None, j.get("study"))]


@router.get("/jobs", summary="Every job, newest first")
def get_jobs(svc: Svc, study: str | None = None) -> list[Job]:
    return list_jobs(svc, study)


def read_job(svc: Service, job_id: str, lines: int) -> Job:
    folder = svc.job_folder(job_id)
    return job_view(svc.jobs.read(folder), log=svc.jobs.log_tail(folder, lines))


@router.get("/jobs/{job_id}", summary="A job: state, progress, ETA, the log's tail", responses=ERRORS)
def get_job(job_id: str, svc: Svc, lines: int = Query(default=40, ge=1, le=500, description="lines of the log's end")) -> Job:
    return read_job(svc, job_id, lines)


@router.post(
    "/jobs/{job_id}/stop",
    summary="Stop a job as Ctrl-C would (completed trials and the last checkpoint stay)",
    responses=ERRORS,
)
def stop_job(job_id: str, svc: Svc) -> Job:
    return job_view(svc.jobs.stop(svc.job_folder(job_id)))


@router.post(
    "/jobs/{job_id}/resume",
    status_code=201,
    summary="Resume a stopped or interrupted distillation from its last checkpoint",
    responses=ERRORS,
)
def resume_job(job_id: str, svc: Svc) -> Job:
    job = svc.jobs.read(svc.job_folder(job_id))
    if job.get("kind") != "distill" or job.get("state") not in ("stopped", "interrupted", "failed"):
        raise HTTPException(409, f"job: {job_id} is a {job.get('state')} {job.get('kind')}; only an unfinished distillation resumes")
    return start_distill(job["study"], DistillRequest(trial=job["trial"], overrides=job.get("overrides", []), resume=True), svc)
