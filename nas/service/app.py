"""`nas serve`: the FastAPI app. The REST API under `/api` (documented at `/docs`) and the pages
that use it; searches and full runs are jobs (child processes running the command line's
code, see `jobs`). Listens on 127.0.0.1 unless told otherwise; beyond loopback every request
carries a bearer token (the pages: a cookie set by /login)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import importlib.util
import ipaddress
import logging
import threading
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill.errors import InputError
from nas.service.catalog import Catalog, NotFound, model_card, study_json, teacher_label, trial_json
from nas.service.jobs import ACTIVE, Jobs
from nas.study.locks import writer_of

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
"""bytes: a request body beyond this is refused (413)"""
COOKIE = "nas_token"
SERVER_KEYS = ("study.storage",)
"""spec keys a request may not set: the server reads only the storages its specs name"""
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",  # no other site frames a page to steer clicks on it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
DOCS_CSP = SECURITY_HEADERS["Content-Security-Policy"].replace(
    "default-src 'self'", "default-src 'self' 'unsafe-inline'"
)
"""the Swagger page starts itself with an inline script"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SearchRequest(BaseModel):
    """Start (or continue) a study's search, as `nas search SPEC KEY=VALUE... --trials N`."""

    model_config = ConfigDict(extra="forbid")
    spec: str = Field(max_length=200, description="a .toml study spec in the studies folder, e.g. demo.toml")
    overrides: list[str] = Field(
        default=[], max_length=50, description="KEY=VALUE settings over the spec's, e.g. distill.steps=50"
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

    @model_validator(mode="after")
    def _one_pick(self) -> DistillRequest:
        if (self.trial is None) == (self.best is None):
            raise ValueError("give either trial (a number) or best (a quality metric)")
        if self.max_params is not None and self.best is None:
            raise ValueError("max_params goes with best")
        if self.resume and self.restart:
            raise ValueError("resume and restart exclude each other")
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
    result: dict[str, Any] | None = Field(default=None, description="a finished full run's export, trial and command")
    log: list[str] | None = Field(default=None, description="the end of its log (one job's reading only)")


class Problem(BaseModel):
    error: str = Field(description="one line naming the key at fault and what is allowed")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text}
    for status, text in (
        (400, "invalid input"),
        (404, "no such study, trial, export or job"),
        (409, "a run holds the study or the trial"),
        (422, "a request that does not fit its schema"),
    )
}


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if len(item) > 500 or "=" not in item or item.startswith("-"):
            raise InputError(f"overrides: {item[:80]!r} is not KEY=VALUE (e.g. distill.steps=50)")
        if item.split("=", 1)[0].strip() in SERVER_KEYS:
            raise InputError(f"overrides: {item.split('=', 1)[0]} is set by the spec file, not by a request")


def _cli_words(exc: InputError) -> InputError:
    """The command line's refusal in the API's words (`--max-params` is `max_params`)."""
    text = str(exc)
    for flag, key in (("--max-params", "max_params"), ("--trial", "trial"), ("--best", "best")):
        text = text.replace(flag, key)
    return InputError(text)


class BodyLimit:
    """Refuse a request body over `MAX_BODY` bytes as it arrives (chunked bodies have no
    length to check beforehand)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY:
                raise HTTPException(413, f"body: at most {MAX_BODY} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(studies: Path, token: str | None = None, address: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    """The app over the specs in `studies`. `token`: required on every request; `address`: a
    Ray cluster that searches join; `host`: where it listens (on loopback, requests must name
    a loopback host, so that another site cannot reach it through DNS rebinding)."""
    studies = studies.absolute()
    catalog = Catalog(studies)
    jobs = Jobs(studies)
    starting = threading.Lock()  # checking that nobody holds a study and starting a job are one step
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["static"] = lambda name: f"/static/{name}?v={_static_version(name)}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await asyncio.to_thread(jobs.stop_all)

    app = FastAPI(
        title="distill-nas",
        summary="Search student architectures for knowledge distillation, then distill and ship them.",
        lifespan=lifespan,
        docs_url=None,  # served below from files of the swagger-ui-py package: nothing comes from outside
        redoc_url=None,
    )
    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Host check on loopback, the token, the body's declared size, JSON bodies for the
        API; security headers on every answer."""
        response = _refusal(request)
        if response is None:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path == "/docs":
            response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    def _refusal(request: Request) -> Response | None:
        if is_loopback(host):
            try:
                named = urllib.parse.urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
            except ValueError:
                named = ""
            if not is_loopback(named):
                return _error(400, "host: requests to this server must name 127.0.0.1 or localhost")
        if token is not None and request.url.path != "/login":
            given = request.headers.get("authorization", "")
            given = given.removeprefix("Bearer ") if given.startswith("Bearer ") else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse("/login", status_code=303)  # a browser: the sign-in form
                return _error(401, "authorization: a bearer token is required (Authorization: Bearer TOKEN)")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdecimal() or int(length) > MAX_BODY):
            return _error(413, f"body: at most {MAX_BODY} bytes")
        if request.method == "POST" and request.url.path.startswith("/api"):
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            if kind != "application/json":
                return _error(415, "content-type: the API takes application/json")
        return None

    def failed(request: Request, status: int, message: str) -> Response:
        """The API answers errors in JSON; a page, with a page that says the same."""
        if request.url.path.startswith(("/api", "/openapi")) or "text/html" not in request.headers.get("accept", ""):
            return _error(status, message)
        return templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message}, status_code=status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return failed(request, 422, "body: not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"  # after body, query or path
        return failed(request, 422, f"{where}: {first.get('msg', 'invalid')}".replace("Value error, ", ""))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and routing's 404, 405
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return failed(request, exc.status_code, str(exc.detail))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return failed(request, 400, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return failed(request, 404, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        return failed(request, 500, f"internal error: {type(exc).__name__}: {exc}")

    # ---- the API ----

    def _study(name: str) -> tuple[str, Any, Any]:
        file, spec = catalog.spec_of(name)
        return file, spec, catalog.study(spec)

    def _searched(name: str) -> tuple[Any, Any]:
        _, spec, study = _study(name)
        if study is None:
            raise NotFound(f"study {name!r} has not been searched yet")
        return spec, study

    def _about(
        name: str, file: str, spec: Any, running: list[dict[str, Any]], study: Any, trials: bool
    ) -> dict[str, Any]:
        """A study as the API gives it; with `trials`, every trial and the hypervolume."""
        mine = [job_view(j).model_dump() for j in running if j.get("study") == name]
        target = max([spec.study.trials, *[j.get("trials") or 0 for j in mine if j["kind"] == "search"]])
        row = {"name": name, "spec": file, "task": spec.study.task, "running_jobs": mine, "target": target}
        if study is None:
            empty = {"trials": [], "hypervolume": [], "metrics": [], "counts": {}} if trials else {}
            return row | {"searched": False, "teacher": teacher_label(spec), "evaluated": 0, "front_size": 0} | empty
        s = study_json(study, with_trials=trials)
        return (
            row
            | s
            | {"searched": True, "teacher": s["teacher"] or teacher_label(spec), "target": max(target, s["evaluated"])}
        )

    @app.get("/api/studies", tags=["studies"], summary="The studies of the folder")
    def list_studies() -> list[dict[str, Any]]:
        running = jobs.running()
        rows = []
        for name, (file, spec, error) in sorted(catalog.specs().items()):
            if spec is None:
                rows.append({"name": name, "spec": file, "error": error, "running_jobs": []})
                continue
            try:
                rows.append(_about(name, file, spec, running, catalog.study(spec), trials=False) | {"error": None})
            except Exception as exc:  # noqa: BLE001 - one study's storage down does not hide the others
                reason = f"study.storage: cannot read {spec.storage_url}: {type(exc).__name__}: {exc}"
                rows.append({"name": name, "spec": file, "error": reason, "running_jobs": []})
        return rows

    @app.get(
        "/api/studies/{name}", tags=["studies"], summary="A study: its trials, front and hypervolume", responses=ERRORS
    )
    def get_study(name: str) -> dict[str, Any]:
        file, spec, study = _study(name)
        return _about(name, file, spec, jobs.running(name), study, trials=True)

    @app.get(
        "/api/studies/{name}/front",
        tags=["studies"],
        summary="The Pareto front (as `nas pareto --json`)",
        responses=ERRORS,
    )
    def get_front(name: str) -> Response:
        from nas.pareto import front_json

        _, study = _searched(name)
        return Response(front_json(study), media_type="application/json")  # the command line's very text

    @app.get("/api/studies/{name}/trials/{number}", tags=["studies"], summary="One trial in full", responses=ERRORS)
    def get_trial(name: str, number: int) -> dict[str, Any]:
        spec, study = _searched(name)
        return trial_json(spec, study, number)

    @app.get(
        "/api/studies/{name}/trials/{number}/card",
        tags=["studies"],
        summary="A distilled trial's model card",
        responses=ERRORS,
    )
    def get_card(name: str, number: int) -> dict[str, Any]:
        _, spec = catalog.spec_of(name)
        card = model_card(spec, number)
        if not card.is_file():
            raise NotFound(f"trial {number} of study {name!r} has no export yet")
        return {"export": str(card.parent), "markdown": card.read_text()}

    @app.post("/api/searches", tags=["jobs"], status_code=201, summary="Start a search (a job)", responses=ERRORS)
    def start_search(request: SearchRequest) -> Job:
        _check_overrides(request.overrides)
        spec = catalog.load(request.spec, request.overrides)
        args = ["search", _rel(studies, request.spec), *request.overrides]
        if request.trials is not None:
            args += ["--trials", str(request.trials)]
        if address:
            args += ["--address", address]
        with starting:
            _refuse_busy(spec, "search", f"study.name: study {spec.name!r} is being searched", spec.name)
            job = jobs.start(spec.name, spec.out_dir, "search", args, trials=request.trials or spec.study.trials)
        return job_view(job)

    def _refuse_busy(spec: Any, role: str, doing: str, study: str, trial: int | None = None) -> None:
        """409 when a job of this service or any run on this machine holds `role` of the study."""
        for j in jobs.running(study):
            if j["kind"] == role.split("-")[0] and (trial is None or j.get("trial") == trial):
                raise HTTPException(409, f"{doing} by job {j['id']}; stop it first")
        holder = writer_of(spec, role)
        if holder is not None:
            raise HTTPException(409, f"{doing} by {holder}; wait for it to end or stop it")

    @app.post(
        "/api/studies/{name}/distill",
        tags=["jobs"],
        status_code=201,
        summary="Fully distill a trial (a job)",
        responses=ERRORS,
    )
    def start_distill(name: str, request: DistillRequest) -> Job:
        from distill.tasks import quality_metrics
        from nas.full import checkpoint_dir, export_dir, has_checkpoint, select_trial

        _check_overrides(request.overrides)
        file, _ = catalog.spec_of(name)
        spec = catalog.load(file, request.overrides)
        study = catalog.study(spec)
        if study is None:
            raise InputError(f"study.name: study {name!r} has not been searched yet; start a search first")
        try:
            trial = select_trial(
                study,
                number=request.trial,
                best=request.best,
                max_params=request.max_params,
                metrics=quality_metrics(spec.task),
            )
        except InputError as exc:
            raise _cli_words(exc) from None
        n = trial.number
        if (export_dir(spec, n) / "config.json").exists() and not request.overwrite:
            raise HTTPException(
                409, f"overwrite: trial {n} already has an export in {export_dir(spec, n)}; set overwrite to replace it"
            )
        if has_checkpoint(spec, n) and not (request.resume or request.restart):
            raise HTTPException(
                409,
                f"resume: an unfinished run of trial {n} left a checkpoint in {checkpoint_dir(spec, n)}; "
                "set resume to continue it or restart to discard it",
            )
        args = ["distill", _rel(studies, file), *request.overrides, "--trial", str(n)]
        args += [f"--{flag}" for flag in ("resume", "restart", "overwrite") if getattr(request, flag)]
        with starting:
            _refuse_busy(spec, f"distill-{n}", f"trial: trial {n} of study {name!r} is being distilled", name, n)
            job = jobs.start(name, spec.out_dir, "distill", args, trial=n, overrides=request.overrides)
        return job_view(job)

    @app.get("/api/jobs", tags=["jobs"], summary="Every job, newest first")
    def list_jobs(study: str | None = None) -> list[Job]:
        return [job_view(j) for j in jobs.all() if study in (None, j.get("study"))]

    def _job(job_id: str) -> Path:
        folder = jobs.find(job_id)
        if folder is None:
            raise NotFound(f"no job {job_id!r}")
        return folder

    @app.get(
        "/api/jobs/{job_id}", tags=["jobs"], summary="A job: state, progress, ETA, the log's tail", responses=ERRORS
    )
    def get_job(job_id: str, lines: int = Query(default=40, ge=1, le=500, description="lines of the log's end")) -> Job:
        folder = _job(job_id)
        return job_view(jobs.read(folder), log=jobs.log_tail(folder, lines))

    @app.post(
        "/api/jobs/{job_id}/stop",
        tags=["jobs"],
        summary="Stop a job as Ctrl-C would (completed trials and the last checkpoint stay)",
        responses=ERRORS,
    )
    def stop_job(job_id: str) -> Job:
        return job_view(jobs.stop(_job(job_id)))

    @app.post(
        "/api/jobs/{job_id}/resume",
        tags=["jobs"],
        status_code=201,
        summary="Resume a stopped or interrupted distillation from its last checkpoint",
        responses=ERRORS,
    )
    def resume_job(job_id: str) -> Job:
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
        return templates.TemplateResponse(request, template, context)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def studies_page(request: Request) -> HTMLResponse:
        recent = [j.model_dump() for j in list_jobs()[:20]]
        return page(request, "studies.html", studies=list_studies(), specs=catalog.spec_names(), jobs=recent)

    @app.get("/studies/{name}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, name: str) -> HTMLResponse:
        file, spec = catalog.spec_of(name)
        return page(request, "study.html", name=name, spec_file=file, task=spec.study.task)

    @app.get("/studies/{name}/trials/{number}", response_class=HTMLResponse, include_in_schema=False)
    def trial_page(request: Request, name: str, number: int) -> HTMLResponse:
        spec, study = _searched(name)
        budget = {
            f.name: getattr(spec.full, f.name)
            for f in dataclasses.fields(spec.full)
            if type(getattr(spec.full, f.name)) in (int, float)
        }
        return page(
            request,
            "trial.html",
            name=name,
            trial=trial_json(spec, study, number),
            study=study_json(study, with_trials=False),
            budget=budget,
            jobs=[j.model_dump() for j in list_jobs(name)],
        )

    @app.get("/studies/{name}/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request, name: str, trials: str = "") -> HTMLResponse:
        spec, study = _searched(name)
        picked = trials.replace(" ", "").split(",")
        if not all(n.isdecimal() for n in picked) or not 2 <= len(set(picked)) <= 4:
            raise InputError("trials: compare 2 to 4 different trials, e.g. ?trials=3,5")
        numbers = list(dict.fromkeys(int(n) for n in picked))
        shown = [trial_json(spec, study, n) for n in numbers]
        return page(request, "compare.html", name=name, trials=shown, study=study_json(study, with_trials=False))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> HTMLResponse:
        return page(request, "job.html", job=get_job(job_id, lines=60).model_dump())

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
        path = _swagger_file(name)
        if path is None:
            raise NotFound(f"no file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        path = _static_file(name)
        if path is None:
            raise NotFound(f"no file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    return app


def _swagger_file(name: str) -> Path | None:
    """Swagger UI's files, as the swagger-ui-py package ships them."""
    if name not in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        return None
    found = importlib.util.find_spec("swagger_ui")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(found.submodule_search_locations[0]) / "static" / name
    return path if path.is_file() else None


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


def job_view(job: dict[str, Any], log: list[str] | None = None) -> Job:
    """A job for the API: what was asked and its state, with the progress's ETA counted down
    to now, the command that reproduces it and (`log`) the end of its log."""
    import shlex

    progress = dict(job.get("progress") or {})
    if job.get("state") in ACTIVE and progress.get("eta_s") is not None and progress.get("at"):
        progress["eta_s"] = max(0.0, round(progress["eta_s"] - (time.time() - progress["at"]), 1))
    elif job.get("state") not in ACTIVE:
        progress.pop("eta_s", None)
    shown = {k: v for k, v in job.items() if k not in ("progress", "started_ticks")}
    return Job(**shown, command=shlex.join(["nas", *job.get("args", [])]), progress=progress, log=log)
