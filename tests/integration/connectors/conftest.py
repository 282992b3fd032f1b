"""Fixtures for the connector tests; makes ``contract`` importable (``from contract import ...``).

With --import-mode=importlib test directories are not on sys.path, so this directory is added
for the shared contract module that every connector's test file subclasses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backvault.repo.repository import Repository
from backvault.storage.local import LocalStore

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from contract import REPOSITORY_PASSWORD  # noqa: E402 - importable only once the path is set


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repositories created by connector tests use the cheap KDF."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    """An empty repository for a connector to back up into."""
    store = LocalStore(tmp_path / "repository")
    Repository.init(store, REPOSITORY_PASSWORD)
    return Repository.open(store, REPOSITORY_PASSWORD)
