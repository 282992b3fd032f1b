"""Catalog fixtures for every unit test: an empty, freshly migrated catalog on each backend of
``database_url`` (tests/conftest.py: SQLite and PostgreSQL), a master secret, a fake clock and the
services' context over them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backvault.control.catalog import Catalog, open_catalog
from backvault.control.context import ServiceContext
from backvault.control.locations import ensure_default_location
from backvault.control.secrets import MasterSecret, load_master_secret

_CONTROL_HELPERS = str(Path(__file__).resolve().parent / "control")
if _CONTROL_HELPERS not in sys.path:  # --import-mode=importlib puts no test directory on sys.path
    sys.path.insert(0, _CONTROL_HELPERS)

from control_helpers import FakeClock  # noqa: E402 - importable only once the path is set


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast repository KDF, and no catalog or master secret leaking in from the caller's environment."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
    monkeypatch.delenv("BACKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("BACKVAULT_MASTER_SECRET", raising=False)


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
