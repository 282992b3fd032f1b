"""Fixtures for the repository integration tests; makes repo_helpers importable.

With --import-mode=importlib test directories are not on sys.path, so this adds its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _fast_kdf_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key objects created in the test process use the cheap KDF too."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
