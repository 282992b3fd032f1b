"""``backvault server --metrics-listen``: the plain /metrics listener for Prometheus and its safety checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backvault.api.metrics_listener import (
    MetricsListenerError,
    check_listen_address,
    is_loopback,
    read_token_file,
    start_metrics_listener,
)
from backvault.control.context import ServiceContext
from backvault.control.vaults import create_backup_vault

TOKEN = "0123456789abcdef0123456789abcdef"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def listener(context: ServiceContext) -> Iterator[str]:
    """A metrics listener with a token on a free loopback port; yields its base URL."""
    port = _free_port()
    server, thread = start_metrics_listener(context, "127.0.0.1", port, TOKEN)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_scrape_needs_the_bearer_token(listener: str, context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    assert httpx.get(f"{listener}/metrics").status_code == 401
    wrong = httpx.get(f"{listener}/metrics", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in wrong.text
    assert httpx.get(f"{listener}/metrics", headers={"Authorization": TOKEN}).status_code == 401
    scraped = httpx.get(f"{listener}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "backvault_unprotected_resources 0.0" in scraped.text
    assert "# TYPE backvault_jobs gauge" in scraped.text
    # Nothing else is served there: not the API, not the dashboard.
    for path in ("/", "/backvault/dashboard/", "/backup-vaults/"):
        assert httpx.get(listener + path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_without_a_token_only_loopback_is_allowed(context: ServiceContext) -> None:
    port = _free_port()
    server, thread = start_metrics_listener(context, "127.0.0.1", port, None)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    with pytest.raises(MetricsListenerError, match="--metrics-token-file"):
        start_metrics_listener(context, "0.0.0.0", _free_port(), None)


def test_listen_address_rules() -> None:
    for host in ("127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        check_listen_address(host, 9464, has_token=False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "metrics.example.com"):
        assert not is_loopback(host), host
        with pytest.raises(MetricsListenerError) as refused:
            check_listen_address(host, 9464, has_token=False)
        assert "without authentication" in str(refused.value)
        assert "--metrics-token-file" in str(refused.value) and "127.0.0.1" in str(refused.value)
        check_listen_address(host, 9464, has_token=True)


def test_token_files(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"  {TOKEN}\n")
    good.chmod(0o600)
    assert read_token_file(good) == TOKEN
    short = tmp_path / "short"
    short.write_text("secret\n")
    with pytest.raises(MetricsListenerError, match="at least 16 characters"):
        read_token_file(short)
    spaced = tmp_path / "spaced"
    spaced.write_text("0123456789 abcdef0123456789\n")
    with pytest.raises(MetricsListenerError, match="without spaces"):
        read_token_file(spaced)
    with pytest.raises(MetricsListenerError, match="cannot read the metrics token file"):
        read_token_file(tmp_path / "missing")


def _server(*arguments: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "BACKVAULT_TEST_FAST_KDF": "1"}
    environment.pop("BACKVAULT_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "backvault.cli.main", "server", "--data-dir", str(data_dir), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_server_refuses_an_open_metrics_listener_without_a_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    refused = _server("--workers", "0", "--metrics-listen", f"0.0.0.0:{_free_port()}", data_dir=data_dir)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert "without authentication" in message and "--metrics-token-file" in message
    assert not data_dir.exists()  # refused before anything was created
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    weak = _server(
        "--metrics-listen", "127.0.0.1:9", "--metrics-token-file", str(token_file), data_dir=data_dir
    )
    assert weak.returncode == 1 and "at least 16 characters" in " ".join(weak.stderr.split())
    assert "short" not in weak.stderr  # the token itself is never echoed
    orphan = _server("--metrics-token-file", str(token_file), data_dir=data_dir)
    assert orphan.returncode == 1 and "--metrics-listen" in orphan.stderr
    bad_address = _server("--metrics-listen", "nowhere", data_dir=data_dir)
    assert bad_address.returncode == 1 and "--metrics-listen 'nowhere' is not HOST:PORT" in bad_address.stderr
