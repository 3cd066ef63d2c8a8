"""The web service: `nas serve`, a FastAPI app and REST API over a folder of study specs that
launches searches and full runs as jobs and shows studies, fronts, trials and exports."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from distill.errors import InputError

__all__ = ["serve"]

MIN_TOKEN = 16
"""characters: a shorter token is refused"""


def serve(
    studies: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    address: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the studies folder until interrupted (`on_ready(url)` once it listens). Beyond
    loopback only with a token."""
    import uvicorn

    from nas.service.app import create_app, is_loopback

    if not studies.is_dir():
        raise InputError(f"--studies: {studies} is not a folder of study specs")
    if not is_loopback(host) and token is None:
        raise InputError(
            f"--host: listening on {host} lets other machines in; give a bearer token with --token or NAS_TOKEN "
            f"(at least {MIN_TOKEN} characters), or keep the default 127.0.0.1"
        )
    if token is not None and len(token) < MIN_TOKEN:
        raise InputError(
            f"--token: at least {MIN_TOKEN} characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port (0-65535; 0 picks a free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"--port: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)  # connections wait in the backlog from now on, before the app has started
    bound = sock.getsockname()[1]
    app = create_app(studies, token=token, address=address, host=host)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=60)
    server = uvicorn.Server(config)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}/"
    if on_ready is not None:
        on_ready(url)
    server.run(sockets=[sock])
