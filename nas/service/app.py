"""`nas serve`: the FastAPI app. The REST API under `/api` (documented at `/docs`) and the pages
that use it; searches and full runs are jobs (child processes running the command line's
code, see `jobs`). Listens on 127.0.0.1 unless told otherwise; beyond loopback every request
carries a bearer token (the pages: a cookie set by /login)."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill.errors import InputError
from nas.service.catalog import Catalog, study_json, trial_json
from nas.service.jobs import ACTIVE, Jobs

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
"""bytes: a request body beyond this is refused (413)"""
COOKIE = "nas_token"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SearchRequest(BaseModel):
    """Start (or continue) a study's search, as `nas search SPEC KEY=VALUE... --trials N`."""

    model_config = ConfigDict(extra="forbid")
    spec: str = Field(max_length=200, description="a .toml study spec inside the studies folder, e.g. demo.toml")
    overrides: list[str] = Field(
        default=[], max_length=50, description="KEY=VALUE settings over the spec's, e.g. distill.steps=50"
    )
    trials: int | None = Field(default=None, ge=1, le=100_000, description="the total number of architectures")


class DistillRequest(BaseModel):
    """Fully distill one trial, as `nas distill SPEC --trial N` (or `--best METRIC --max-params P`)."""

    model_config = ConfigDict(extra="forbid")
    trial: int | None = Field(default=None, ge=0, description="the trial number")
    best: str | None = Field(
        default=None, max_length=64, description="instead of trial: the front's best at this metric"
    )
    max_params: float | None = Field(default=None, gt=0, description="with best: at most this many parameters")
    overrides: list[str] = Field(default=[], max_length=50, description="KEY=VALUE settings, e.g. full.steps=500")
    resume: bool = Field(default=False, description="continue an unfinished run from its last checkpoint")
    restart: bool = Field(default=False, description="discard an unfinished run's checkpoints")
    overwrite: bool = Field(default=False, description="replace an earlier export of this trial")

    @model_validator(mode="after")
    def _one_pick(self) -> DistillRequest:
        if (self.trial is None) == (self.best is None):
            raise ValueError("give either trial (a number) or best (a quality metric)")
        if self.max_params is not None and self.best is None:
            raise ValueError("max_params goes with best")
        if self.resume and self.restart:
            raise ValueError("resume and restart exclude each other")
        return self


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if len(item) > 500 or "=" not in item or item.startswith("-"):
            raise InputError(f"overrides: {item[:80]!r} is not KEY=VALUE (e.g. distill.steps=50)")


def create_app(studies: Path, token: str | None = None, address: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    """The app over the specs in `studies`. `token`: required on every request; `address`: a
    Ray cluster that searches join; `host`: where it listens (on loopback, requests must name
    a loopback host, so that another site cannot reach it through DNS rebinding)."""
    studies = studies.absolute()
    catalog = Catalog(studies)
    jobs = Jobs(studies)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["static"] = lambda name: f"/static/{name}?v={_static_version(name)}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        jobs.stop_all()

    app = FastAPI(
        title="distill-nas",
        summary="Search student architectures for knowledge distillation, then distill and ship them.",
        lifespan=lifespan,
        docs_url=None,  # served below from the swagger-ui-bundle package: nothing is fetched from outside
        redoc_url=None,
    )
    app.state.jobs, app.state.catalog = jobs, catalog

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Host check on loopback, the token, the body size, JSON bodies for the API."""
        if is_loopback(host) and not is_loopback(
            urllib.parse.urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        ):
            return _error(400, "host: requests to this server must name 127.0.0.1 or localhost")
        if token is not None and request.url.path != "/login":
            given = request.headers.get("authorization", "")
            given = given.removeprefix("Bearer ") if given.startswith("Bearer ") else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse("/login", status_code=303)  # a browser: the sign-in form
                return _error(401, "authorization: a bearer token is required (Authorization: Bearer TOKEN)")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _error(413, f"body: at most {MAX_BODY} bytes")
        if request.method == "POST" and request.url.path.startswith("/api"):
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            if kind != "application/json":
                return _error(415, "content-type: the API takes application/json")
            body = await request.body()  # chunked bodies have no length to check beforehand
            if len(body) > MAX_BODY:
                return _error(413, f"body: at most {MAX_BODY} bytes")
        return await call_next(request)

    def failed(request: Request, status: int, message: str) -> Response:
        """The API answers errors in JSON; a page, with a page that says the same."""
        if request.url.path.startswith(("/api", "/openapi")) or "text/html" not in request.headers.get("accept", ""):
            return _error(status, message)
        return templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message, "token_login": token is not None}, status_code=status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return failed(request, 422, f"{where}: {first.get('msg', 'invalid')}".replace("Value error, ", ""))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and routing's 404, 405
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return failed(request, exc.status_code, str(exc.detail))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return failed(request, 400, str(exc))

    @app.exception_handler(LookupError)
    async def not_found(request: Request, exc: LookupError) -> Response:
        return failed(request, 404, str(exc.args[0] if exc.args else exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        return failed(request, 500, f"internal error: {type(exc).__name__}: {exc}")

    # ---- the API ----

    def _study(name: str) -> tuple[str, Any, Any]:
        file, spec = catalog.spec_of(name)
        return file, spec, catalog.study(spec)

    def _summary(name: str, file: str, spec: Any, error: str | None, running: list[dict[str, Any]]) -> dict[str, Any]:
        mine = [_job_brief(j) for j in running if j.get("study") == name]
        row: dict[str, Any] = {"name": name, "spec": file, "error": error, "running_jobs": mine}
        if spec is None:
            return row
        row |= {"task": spec.study.task, "target": _target(spec, mine)}
        study = catalog.study(spec)
        if study is None:
            return row | {"searched": False, "teacher": _teacher_name(spec), "evaluated": 0, "front_size": 0}
        s = study_json(study, with_trials=False)
        return row | {
            "searched": True,
            "teacher": s["teacher"] or _teacher_name(spec),
            "evaluated": s["evaluated"],
            "front_size": s["front_size"],
            "counts": s["counts"],
            "target": max(row["target"], s["evaluated"]),
        }

    @app.get("/api/studies", tags=["studies"], summary="The studies of the folder")
    def list_studies() -> list[dict[str, Any]]:
        running = jobs.running()
        return [_summary(name, f, s, e, running) for name, (f, s, e) in sorted(catalog.specs().items())]

    @app.get("/api/studies/{name}", tags=["studies"], summary="A study: its trials, front and hypervolume")
    def get_study(name: str) -> dict[str, Any]:
        file, spec, study = _study(name)
        running = [_job_brief(j) for j in jobs.running(name)]
        base = {
            "name": name,
            "spec": file,
            "task": spec.study.task,
            "running_jobs": running,
            "target": _target(spec, running),
        }
        if study is None:
            return base | {"searched": False, "teacher": _teacher_name(spec), "trials": [], "hypervolume": []}
        s = study_json(study)
        return (
            base
            | s
            | {
                "searched": True,
                "teacher": s["teacher"] or _teacher_name(spec),
                "target": max(base["target"], s["evaluated"]),
            }
        )

    @app.get("/api/studies/{name}/front", tags=["studies"], summary="The Pareto front (as `nas pareto --json`)")
    def get_front(name: str) -> dict[str, Any]:
        from nas.pareto import front_json

        study = _searched(name)
        return json.loads(front_json(study))

    def _searched(name: str) -> Any:
        _, _, study = _study(name)
        if study is None:
            raise LookupError(f"study {name!r} has not been searched yet")
        return study

    @app.get("/api/studies/{name}/trials/{number}", tags=["studies"], summary="One trial in full")
    def get_trial(name: str, number: int) -> dict[str, Any]:
        _, spec, study = _study(name)
        if study is None:
            raise LookupError(f"study {name!r} has not been searched yet")
        return trial_json(spec, study, number)

    @app.get("/api/studies/{name}/trials/{number}/card", tags=["studies"], summary="A distilled trial's model card")
    def get_card(name: str, number: int) -> dict[str, Any]:
        from nas.full import export_dir

        _, spec, _ = _study(name)
        folder = export_dir(spec, number)
        card = folder / "README.md"
        if not card.is_file():
            raise LookupError(f"trial {number} of study {name!r} has no export yet")
        return {"export": str(folder), "markdown": card.read_text()}

    @app.post("/api/searches", tags=["jobs"], status_code=201, summary="Start a search (a job)")
    def start_search(request: SearchRequest) -> dict[str, Any]:
        _check_overrides(request.overrides)
        spec = catalog.load(request.spec, request.overrides)
        busy = jobs.running(spec.name)
        if any(j["kind"] == "search" for j in busy):
            raise HTTPException(
                409, f"study.name: study {spec.name!r} is being searched by job {busy[0]['id']}; stop it first"
            )
        args = ["search", _rel(studies, request.spec), *request.overrides]
        if request.trials is not None:
            args += ["--trials", str(request.trials)]
        if address:
            args += ["--address", address]
        return _job_brief(jobs.start(spec.name, spec.out_dir, "search", args, trials=request.trials or spec.study.trials))

    @app.post("/api/studies/{name}/distill", tags=["jobs"], status_code=201, summary="Fully distill a trial (a job)")
    def start_distill(name: str, request: DistillRequest) -> dict[str, Any]:
        from nas.full import select_trial

        _check_overrides(request.overrides)
        file, _ = catalog.spec_of(name)
        spec = catalog.load(file, request.overrides)
        study = catalog.study(spec)
        if study is None:
            raise InputError(f"study.name: study {name!r} has not been searched yet; start a search first")
        from distill.tasks import quality_metrics

        trial = select_trial(
            study,
            number=request.trial,
            best=request.best,
            max_params=request.max_params,
            metrics=quality_metrics(spec.task),
        )
        for j in jobs.running(name):
            if j["kind"] == "distill" and j.get("trial") == trial.number:
                raise HTTPException(409, f"trial: trial {trial.number} is being distilled by job {j['id']}")
        args = ["distill", _rel(studies, file), *request.overrides, "--trial", str(trial.number)]
        args += [f"--{flag}" for flag in ("resume", "restart", "overwrite") if getattr(request, flag)]
        return _job_brief(jobs.start(name, spec.out_dir, "distill", args, trial=trial.number, overrides=request.overrides))

    @app.get("/api/jobs", tags=["jobs"], summary="Every job, newest first")
    def list_jobs(study: str | None = None) -> list[dict[str, Any]]:
        return [_job_brief(j) for j in jobs.all() if study in (None, j.get("study"))]

    def _job(job_id: str) -> Path:
        folder = jobs.find(job_id)
        if folder is None:
            raise LookupError(f"no job {job_id!r}")
        return folder

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="A job: state, progress, ETA, the log's tail")
    def get_job(job_id: str, lines: int = 40) -> dict[str, Any]:
        folder = _job(job_id)
        return _job_brief(jobs.read(folder)) | {"log": jobs.log_tail(folder, max(1, min(lines, 500)))}

    @app.post(
        "/api/jobs/{job_id}/stop", tags=["jobs"], summary="Stop a job (completed trials, the last checkpoint stay)"
    )
    def stop_job(job_id: str) -> dict[str, Any]:
        return _job_brief(jobs.stop(_job(job_id)))

    @app.post(
        "/api/jobs/{job_id}/resume",
        tags=["jobs"],
        status_code=201,
        summary="Resume a stopped or interrupted distillation",
    )
    def resume_job(job_id: str) -> dict[str, Any]:
        job = jobs.read(_job(job_id))
        if job.get("kind") != "distill" or job.get("state") not in ("stopped", "interrupted", "failed"):
            raise HTTPException(
                409, f"job: {job_id} is a {job.get('state')} {job.get('kind')}; only an unfinished distillation resumes"
            )
        return start_distill(
            job["study"], DistillRequest(trial=job["trial"], overrides=job.get("overrides", []), resume=True)
        )

    # ---- pages ----

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"token_login": token is not None, **context})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def studies_page(request: Request) -> HTMLResponse:
        return page(request, "studies.html", studies=list_studies(), specs=catalog.spec_names(), jobs=list_jobs()[:20])

    @app.get("/studies/{name}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, name: str) -> HTMLResponse:
        file, spec, _ = _study(name)
        return page(request, "study.html", name=name, spec_file=file, task=spec.study.task)

    @app.get("/studies/{name}/trials/{number}", response_class=HTMLResponse, include_in_schema=False)
    def trial_page(request: Request, name: str, number: int) -> HTMLResponse:
        _, spec, study = _study(name)
        if study is None:
            raise LookupError(f"study {name!r} has not been searched yet")
        trial = trial_json(spec, study, number)
        s = study_json(study, with_trials=False)
        budget = {
            f.name: getattr(spec.full, f.name)
            for f in dataclasses.fields(spec.full)
            if type(getattr(spec.full, f.name)) in (int, float)
        }
        return page(request, "trial.html", name=name, trial=trial, study=s, budget=budget, jobs=list_jobs(name))

    @app.get("/studies/{name}/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request, name: str, trials: str = "") -> HTMLResponse:
        _, spec, study = _study(name)
        if study is None:
            raise LookupError(f"study {name!r} has not been searched yet")
        numbers = [int(n) for n in trials.replace(" ", "").split(",") if n.isdigit()]
        if not 2 <= len(numbers) <= 4:
            raise InputError("trials: compare 2 to 4 trials, e.g. ?trials=3,5")
        picked = [trial_json(spec, study, n) for n in numbers]
        return page(request, "compare.html", name=name, trials=picked, study=study_json(study, with_trials=False))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> HTMLResponse:
        return page(request, "job.html", job=get_job(job_id))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", failed=False)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return page(request, "login.html", failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="distill-nas: REST API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        from swagger_ui_bundle import swagger_ui_path

        path = Path(swagger_ui_path) / name
        if (
            "/" in name
            or name not in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
            or not path.is_file()
        ):
            raise LookupError(f"no file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        path = _static_file(name)
        if path is None:
            raise LookupError(f"no file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    return app


def _static_file(name: str) -> Path | None:
    if name == "plotly.min.js":  # plotly's own build, as the plotly package ships it
        import plotly

        return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    path = HERE / "static" / name
    return path if "/" not in name and path.is_file() else None


def _static_version(name: str) -> int:
    path = _static_file(name)
    return int(path.stat().st_mtime) if path else 0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _rel(studies: Path, file: str) -> str:
    """A spec as the job's command names it: relative to the folder above the studies."""
    return f"{studies.name}/{file}"


def _teacher_name(spec: Any) -> str:
    t = spec.teacher
    return t.package and f"{t.package} (package)" or t.model


def _target(spec: Any, running: list[dict[str, Any]]) -> int:
    """The study's total: the spec's trials, or what a running search was asked for."""
    return max([spec.study.trials, *[j.get("trials") or 0 for j in running if j.get("kind") == "search"]])


def _job_brief(job: dict[str, Any]) -> dict[str, Any]:
    """A job for the API: what was asked and its state, with the progress's ETA counted down
    to now and the command that reproduces it."""
    import shlex

    progress = dict(job.get("progress") or {})
    if job.get("state") in ACTIVE and progress.get("eta_s") is not None and progress.get("at"):
        progress["eta_s"] = max(0.0, round(progress["eta_s"] - (time.time() - progress["at"]), 1))
    elif job.get("state") not in ACTIVE:
        progress.pop("eta_s", None)
    return {
        "trial": None,  # a search's
        **{k: v for k, v in job.items() if k not in ("progress", "started_ticks")},
        "command": shlex.join(["nas", *job.get("args", [])]),
        "progress": progress,
    }
