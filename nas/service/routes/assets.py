"""The files the pages load, all from this machine: the app's own, plotly's build as the plotly
package ships it, and Swagger UI (the API's page, /docs) as the swagger-ui-py package ships it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from nas.service.catalog import NotFound

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parents[1] / "static"


@router.get("/docs", response_class=HTMLResponse)
def docs() -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="distill-nas: REST API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


@router.get("/docs-assets/{name}")
def docs_asset(name: str) -> Response:
    return _file(_swagger_file(name), name)


@router.get("/static/{name}")
def static(name: str) -> Response:
    return _file(static_file(name), name)


def _file(path: Path | None, name: str) -> Response:
    if path is None:
        raise NotFound(f"no file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "max-age=86400"})


def _swagger_file(name: str) -> Path | None:
    """Swagger UI's files, as the swagger-ui-py package ships them."""
    if name not in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        return None
    found = importlib.util.find_spec("swagger_ui")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(found.submodule_search_locations[0]) / "static" / name
    return path if path.is_file() else None


def static_file(name: str) -> Path | None:
    if name == "plotly.min.js":  # plotly's own build, as the plotly package ships it
        import plotly

        return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    path = STATIC / name
    return path if "/" not in name and path.is_file() else None


def static_version(name: str) -> int:
    path = static_file(name)
    return int(path.stat().st_mtime) if path else 0
