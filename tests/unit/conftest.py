"""Catalog fixtures for every unit test: each catalog and service test runs on SQLite and on PostgreSQL.

PostgreSQL is a throwaway database ``backvault_test_<random>`` created for the session on
``$BACKVAULT_TEST_POSTGRES_URL`` (default: the local server, user postgres, trust auth) and dropped
at the end; each test gets its own schema in it, so every test starts from an empty, freshly
migrated catalog. An unreachable server fails the tests instead of skipping them: half the
contract would otherwise go untested without anyone noticing.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError

from backvault.control.catalog import Catalog, open_catalog
from backvault.control.context import ServiceContext
from backvault.control.locations import ensure_default_location
from backvault.control.secrets import MasterSecret, load_master_secret

_CONTROL_HELPERS = str(Path(__file__).resolve().parent / "control")
if _CONTROL_HELPERS not in sys.path:  # --import-mode=importlib puts no test directory on sys.path
    sys.path.insert(0, _CONTROL_HELPERS)

from control_helpers import FakeClock  # noqa: E402 - importable only once the path is set

POSTGRES_ADMIN_URL = os.environ.get(
    "BACKVAULT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast repository KDF, and no catalog or master secret leaking in from the caller's environment."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
    monkeypatch.delenv("BACKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("BACKVAULT_MASTER_SECRET", raising=False)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[tuple[URL, Engine]]:
    """Create the session's throwaway PostgreSQL database; yield its URL and an engine on it."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url.render_as_string()}: {error.orig}\n"
            "The catalog tests run on SQLite AND PostgreSQL. Start a local PostgreSQL with trust auth for "
            "user postgres on 127.0.0.1:5432 (`make test` does), or point BACKVAULT_TEST_POSTGRES_URL at "
            "one.",
            pytrace=False,
        )
    name = f"backvault_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Yield the catalog URL of one backend: None (the SQLite default in the data dir) or a PG schema."""
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
def data_dir(tmp_path: Path) -> Path:
    """The server's data directory (catalog.db and master.key for SQLite runs)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def catalog(database_url: str | None, data_dir: Path) -> Iterator[Catalog]:
    """An empty, migrated catalog on the backend under test."""
    opened = open_catalog(database_url, data_dir)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def clock() -> FakeClock:
    """The services' clock, starting at START."""
    return FakeClock()


@pytest.fixture
def master_secret(data_dir: Path) -> MasterSecret:
    """The server's master secret (a key file in the data directory)."""
    return load_master_secret(data_dir)


@pytest.fixture
def context(
    catalog: Catalog, master_secret: MasterSecret, clock: FakeClock, data_dir: Path
) -> ServiceContext:
    """Services' context with the default local location under the data directory."""
    service_context = ServiceContext(catalog=catalog, master_secret=master_secret, clock=clock)
    ensure_default_location(service_context, data_dir / "vaults")
    return service_context
