"""`nas serve`: the FastAPI app. The REST API under `/api` (documented at `/docs`) and the pages
that use it, one router per concept (`nas.service.routes`); searches and full runs are jobs
(child processes running the command layer, see `jobs`). Listens on 127.0.0.1 unless told
otherwise; beyond loopback every request carries a bearer token (the pages: a cookie set by
/login)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill.errors import InputError
from nas.service import routes
from nas.service.catalog import NotFound
from nas.service.routes.pages import COOKIE
from nas.service.state import Service

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
"""bytes: a request body beyond this is refused (413)"""
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
    svc = Service(studies.absolute(), address)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await asyncio.to_thread(svc.jobs.stop_all)

    app = FastAPI(
        title="distill-nas",
        summary="Search student architectures for knowledge distillation, then distill and ship them.",
        lifespan=lifespan,
        docs_url=None,  # served by the assets router from files of the swagger-ui-py package
        redoc_url=None,
    )
    app.state.service, app.state.token = svc, token
    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Host check on loopback, the token, the body's declared size, JSON bodies for the
        API; security headers on every answer."""
        response = refusal(request, host, token)
        if response is None:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path == "/docs":
            response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    _handle_errors(app, svc)
    for router in (routes.studies.router, routes.jobs.router, routes.pages.router, routes.assets.router):
        app.include_router(router)
    return app


def refusal(request: Request, host: str, token: str | None) -> Response | None:
    """The answer to a request refused before any route sees it, or None."""
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


def _handle_errors(app: FastAPI, svc: Service) -> None:
    """Every error as one line: JSON for the API, a page that says the same for a browser."""

    def failed(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith(("/api", "/openapi")) or "text/html" not in request.headers.get("accept", ""):
            return _error(status, message)
        return svc.templates.TemplateResponse(request, "error.html", {"status": status, "message": message}, status_code=status)

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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
