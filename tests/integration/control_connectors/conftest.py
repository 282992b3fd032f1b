"""Fixtures for the control-plane tests over every connector: an installation and a source kind per type.

With --import-mode=importlib no test directory is on sys.path, so this adds its own (for
``source_kinds`` and ``control_plane``), the connector tests' (their data, schemas and servers are
reused from there) and the control unit tests' (``control_helpers``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[2]
for _directory in (
    Path(__file__).resolve().parent,
    _TESTS / "integration" / "connectors",
    _TESTS / "unit" / "control",
):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from control_plane import Installation  # noqa: E402 - importable only once the path is set
from database_kinds import MysqlKind, PostgresqlKind, SqliteKind  # noqa: E402
from service_kinds import DynamodbKind, RedisKind, S3Kind  # noqa: E402
from source_kinds import KIND_KEYS, SourceKind  # noqa: E402


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap KDF, a private backup cache, and nothing from the caller's environment steering the catalog."""
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))
    for variable in ("BACKVAULT_DATABASE_URL", "BACKVAULT_MASTER_SECRET", "BACKVAULT_RESTORE_TEST_DIR"):
        monkeypatch.delenv(variable, raising=False)


def make_kind(key: str, request: pytest.FixtureRequest, tmp_path: Path) -> SourceKind:
    """The source kind named ``key``, private to the requesting test."""
    if key == "postgresql":
        return PostgresqlKind()
    if key == "mysql":
        return MysqlKind()
    if key == "sqlite":
        return SqliteKind(tmp_path / "sqlite-root")
    if key == "redis":
        return RedisKind(tmp_path / "redis")
    moto_endpoint = str(request.getfixturevalue("moto_endpoint"))
    if key == "s3":
        return S3Kind(moto_endpoint)
    if key == "dynamodb":
        return DynamodbKind(moto_endpoint)
    raise ValueError(f"unknown source kind {key!r}")


@pytest.fixture(params=KIND_KEYS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceKind]:
    """Each resource type in turn; what it made is dropped at teardown."""
    made = make_kind(str(request.param), request, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[Installation]:
    """A control plane on a SQLite catalog under a hand-moved clock."""
    created = Installation(tmp_path)
    try:
        yield created
    finally:
        created.close()
