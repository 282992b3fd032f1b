"""End-to-end fixtures: a real backvault API server (uvicorn on 127.0.0.1) over a fresh catalog.

``api_server`` runs on SQLite and on PostgreSQL (a throwaway schema in a throwaway database), with an
admin access key from ``bootstrap_admin``; ``backup_client`` is an unmodified boto3 ``backup`` client
signed with it. Retries are off so a refused request shows up as the error it is, at once.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # --import-mode=importlib puts no test directory on sys.path
    sys.path.insert(0, _HERE)

from e2e_helpers import POSTGRES_ADMIN_URL, ApiServer, running_server  # noqa: E402


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


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[tuple[URL, Engine]]:
    """A throwaway PostgreSQL database for the session; tests get schemas in it."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url.render_as_string()}: {error.orig}", pytrace=False
        )
    name = f"backvault_e2e_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(admin_url.set(database=name), isolation_level="AUTOCOMMIT")
    try:
        yield admin_url.set(database=name), engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The catalog of one backend: None (SQLite in the data dir) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    url, engine = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


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
