"""Serve an ASGI app with uvicorn in a daemon thread of the server process (the API, the metrics listener)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

START_TIMEOUT_SECONDS = 30.0


class ListenError(RuntimeError):
    """The app could not start listening (address in use, not permitted...); uvicorn logged why."""


def serve_in_thread(
    app: Any, host: str, port: int, *, name: str, lifespan: Literal["on", "off"] = "on"
) -> tuple[uvicorn.Server, threading.Thread]:
    """Start serving app on host:port and return once it listens; raise ListenError if it cannot."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan=lifespan
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise ListenError(f"the {name} listener could not listen on {host}:{port} (see the log above)")
    return server, thread


@contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int = 0, *, name: str = "api") -> Iterator[str]:
    """Serve app in a thread while the block runs; yield its base URL. Port 0 takes a free port."""
    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server, thread = serve_in_thread(app, host, port, name=name, lifespan="off")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
