"""The pages: the studies, a study's live front and trials, one trial, a comparison, a job, and
the sign-in form. Server-rendered templates whose scripts read the API."""

from __future__ import annotations

import dataclasses
import hmac
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from distill.errors import InputError
from nas.service.catalog import study_json, trial_json
from nas.service.routes.jobs import list_jobs, read_job
from nas.service.routes.studies import list_studies
from nas.service.state import Service, service

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
Svc = Annotated[Service, Depends(service)]
COOKIE = "nas_token"


def page(svc: Service, request: Request, template: str, **context: Any) -> HTMLResponse:
    return svc.templates.TemplateResponse(request, template, context)


@router.get("/")
def studies_page(request: Request, svc: Svc) -> HTMLResponse:
    recent = [j.model_dump() for j in list_jobs(svc)[:20]]
    return page(svc, request, "studies.html", studies=list_studies(svc), specs=svc.catalog.spec_names(), jobs=recent)


@router.get("/studies/{name}")
def study_page(request: Request, name: str, svc: Svc) -> HTMLResponse:
    file, spec = svc.catalog.spec_of(name)
    return page(svc, request, "study.html", name=name, spec_file=file, task=spec.study.task)


@router.get("/studies/{name}/trials/{number}")
def trial_page(request: Request, name: str, number: int, svc: Svc) -> HTMLResponse:
    spec, study = svc.searched(name)
    budget = {
        f.name: getattr(spec.full, f.name) for f in dataclasses.fields(spec.full) if type(getattr(spec.full, f.name)) in (int, float)
    }
    return page(
        svc,
        request,
        "trial.html",
        name=name,
        trial=trial_json(spec, study, number),
        study=study_json(study, with_trials=False),
        budget=budget,
        jobs=[j.model_dump() for j in list_jobs(svc, name)],
    )


@router.get("/studies/{name}/compare")
def compare_page(request: Request, name: str, svc: Svc, trials: str = "") -> HTMLResponse:
    spec, study = svc.searched(name)
    picked = trials.replace(" ", "").split(",")
    if not all(n.isdecimal() for n in picked) or not 2 <= len(set(picked)) <= 4:
        raise InputError("trials: compare 2 to 4 different trials, e.g. ?trials=3,5")
    numbers = list(dict.fromkeys(int(n) for n in picked))
    shown = [trial_json(spec, study, n) for n in numbers]
    return page(svc, request, "compare.html", name=name, trials=shown, study=study_json(study, with_trials=False))


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, svc: Svc) -> HTMLResponse:
    return page(svc, request, "job.html", job=read_job(svc, job_id, lines=60).model_dump())


@router.get("/login")
def login_page(request: Request, svc: Svc) -> HTMLResponse:
    return page(svc, request, "login.html", failed=False)


@router.post("/login")
async def login(request: Request, svc: Svc) -> Response:
    token = request.app.state.token
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    if token is None or not hmac.compare_digest(given.encode(), token.encode()):
        return page(svc, request, "login.html", failed=True)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response
