"""End-to-end fixtures: a real backvault API server (uvicorn on 127.0.0.1) over a fresh catalog.

``api_server`` runs on SQLite and on PostgreSQL (a throwaway schema in a throwaway database), with an
admin access key from ``bootstrap_admin``; ``backup_client`` is an unmodified boto3 ``backup`` client
signed with it. Retries are off so a refused request shows up as the error it is, at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # --import-mode=importlib puts no test directory on sys.path
    sys.path.insert(0, _HERE)

from e2e_helpers import ApiServer, running_server  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast repository KDF; no catalog, master secret or AWS profile leaking in from the caller."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
    for variable in (
        "BACKVAULT_DATABASE_URL",
        "BACKVAULT_MASTER_SECRET",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def api_server(database_url: str | None, tmp_path: Path) -> Iterator[ApiServer]:
    """A server over a fresh catalog, once on SQLite and once on PostgreSQL."""
    with running_server(database_url, tmp_path / "data") as server:
        yield server


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ApiServer]:
    """A server over a fresh SQLite catalog (for tests whose subject is not the database)."""
    with running_server(None, tmp_path / "data") as server:
        yield server


@pytest.fixture
def backup_client(api_server: ApiServer) -> Any:
    """An unmodified boto3 backup client signed with the admin's key."""
    return api_server.client()
