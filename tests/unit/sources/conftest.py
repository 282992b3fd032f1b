"""Fixtures for the source tests; also makes filesystem_helpers importable.

With --import-mode=importlib test directories are not on sys.path, so this directory
is added for the helper module shared by the filesystem tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backvault.repo.repository import Repository

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session", autouse=True)
def private_cache_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep backup caches out of the real home directory."""
    path = tmp_path_factory.mktemp("backvault-cache")
    previous = os.environ.get("BACKVAULT_CACHE_DIR")
    os.environ["BACKVAULT_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        del os.environ["BACKVAULT_CACHE_DIR"]
    else:
        os.environ["BACKVAULT_CACHE_DIR"] = previous


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A new repository on local storage (tmp_path/repo)."""
    from filesystem_helpers import new_repository  # importable once this module ran

    return new_repository(str(tmp_path / "repo"))
