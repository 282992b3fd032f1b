"""A second, plain HTTP listener serving only ``GET /metrics`` for Prometheus (``--metrics-listen``).

Prometheus cannot sign requests with SigV4, so ``/backvault/metrics`` on the API is out of its reach.
This listener serves the same text (control/metrics.py) and nothing else. With a token file, every
scrape must carry ``Authorization: Bearer <token>`` (compared in constant time); without one it is
only allowed on a loopback address, since the metrics name every protected resource.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import stat
import threading
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from backvault.api.serving import ListenError, serve_in_thread
from backvault.control.context import ServiceContext
from backvault.control.metrics import CONTENT_TYPE, render_metrics

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
MIN_TOKEN_CHARACTERS = 16


class MetricsListenerError(ValueError):
    """The listener's settings are unsafe or unusable; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Tell whether a listen host only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_listen_address(host: str, port: int, *, has_token: bool) -> None:
    """Refuse to serve metrics beyond loopback without a token."""
    if not has_token and not is_loopback(host):
        raise MetricsListenerError(
            f"--metrics-listen {host}:{port} would serve the metrics (every protected resource's ARN, job "
            "counts) to the network without authentication. Give --metrics-token-file FILE (Prometheus "
            "sends it with authorization: {credentials_file: FILE}), or listen on 127.0.0.1."
        )


def read_token_file(path: Path) -> str:
    """Return the bearer token in ``path`` (surrounding whitespace removed), checking it is usable."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise MetricsListenerError(f"cannot read the metrics token file {path}: {reason}") from None
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARACTERS or any(character.isspace() for character in token):
        raise MetricsListenerError(
            f"the metrics token file {path} must hold one token of at least {MIN_TOKEN_CHARACTERS} "
            "characters without spaces (for example the output of `openssl rand -hex 32`)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the metrics token file %s can be read by other users; chmod 600 it", path)
    return token


def metrics_app(context: ServiceContext, token: str | None) -> Starlette:
    """Return the ASGI app answering ``GET /metrics`` (with the bearer token check when ``token`` is set)."""
    expected = f"Bearer {token}".encode() if token is not None else None

    async def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "401 Unauthorized: send Authorization: Bearer <token>\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="backvault metrics"'},
                )
        body = await run_in_threadpool(render_metrics, context)
        return Response(body, media_type=CONTENT_TYPE)

    async def not_found(request: Request, error: Exception) -> Response:
        return PlainTextResponse(f"404 Not Found: only GET {METRICS_PATH} is served here\n", status_code=404)

    app = Starlette(routes=[Route(METRICS_PATH, metrics, methods=["GET"])])
    app.add_exception_handler(404, not_found)
    return app


def start_metrics_listener(
    context: ServiceContext, host: str, port: int, token: str | None
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve the metrics app on host:port in a thread; raise MetricsListenerError if it cannot listen."""
    check_listen_address(host, port, has_token=token is not None)
    try:
        return serve_in_thread(metrics_app(context, token), host, port, name="metrics", lifespan="off")
    except ListenError as error:
        raise MetricsListenerError(str(error)) from None
