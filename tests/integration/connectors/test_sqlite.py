"""SQLite connector: the connector contract, plus a backup taken while another process keeps writing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from contract import ConnectorContract, MakeResource, Mutate, OccupiedMetadataFor, StateOf, new_name

from backvault.domain.arn import ResourceType
from backvault.repo.repository import Repository
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    EndpointSpec,
    RestoreRequest,
    ValidationRequest,
)
from backvault.sources.sqlite import SqliteConnector

DEFAULT_TAGS = {"owner": "platform", "backvault-contract": "default"}


def _state(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted, and the schema: equal exactly when the data is equal."""
    connection = sqlite3.connect(path)
    try:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_schema ORDER BY name")]
        state: dict[str, list[tuple[Any, ...]]] = {
            "__schema__": sorted(connection.execute("SELECT type, name, sql FROM sqlite_schema"))
        }
        for name in names:
            if connection.execute("SELECT type FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0] == (
                "table"
            ):
                state[name] = sorted(connection.execute(f'SELECT * FROM "{name}"'), key=repr)
        return state
    finally:
        connection.close()


def _fill(path: Path, rows: int, tags: Mapping[str, str]) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, blob BLOB)")
        connection.execute("CREATE INDEX items_name ON items(name)")
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.executemany(
            "INSERT INTO items (name, price, blob) VALUES (?, ?, ?)",
            [(f"item {i}", i * 1.25, bytes([i % 256]) * 300) for i in range(rows)],
        )
        connection.execute("INSERT INTO notes VALUES ('hello'), (NULL)")
        if tags:
            connection.execute("CREATE TABLE backvault_tags (key TEXT PRIMARY KEY, value TEXT)")
            connection.executemany("INSERT INTO backvault_tags VALUES (?, ?)", list(tags.items()))
    connection.close()


class TestSqliteContract(ConnectorContract):
    resource_type = ResourceType.SQLITE

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        path = tmp_path / "databases"
        (path / "nested").mkdir(parents=True)
        return path

    @pytest.fixture
    def endpoint(self, root: Path) -> EndpointSpec:
        return EndpointSpec("files", ResourceType.SQLITE, {"root": str(root)}, default_tags=DEFAULT_TAGS)

    @pytest.fixture
    def unusable_endpoints(self, root: Path) -> dict[str, EndpointSpec]:
        (root / "plain-file").write_text("not a directory")
        return {
            "missing root": EndpointSpec("a", ResourceType.SQLITE, {"root": str(root / "missing")}),
            "root is a file": EndpointSpec("b", ResourceType.SQLITE, {"root": str(root / "plain-file")}),
            "relative root": EndpointSpec("c", ResourceType.SQLITE, {"root": "relative/dir"}),
            "no root": EndpointSpec("d", ResourceType.SQLITE, {}),
        }

    @pytest.fixture
    def make_resource(self, root: Path) -> MakeResource:
        def make(name: str, tags: Mapping[str, str]) -> str:
            _fill(root / "nested" / f"{name}.db", 2000, tags)
            return f"nested/{name}.db"

        return make

    @pytest.fixture
    def mutate(self, root: Path) -> Mutate:
        def change(resource: str) -> None:
            connection = sqlite3.connect(root / resource)
            with connection:
                connection.execute("UPDATE items SET price = price * 2 WHERE id % 7 = 0")
                connection.execute("DELETE FROM items WHERE id % 11 = 0")
                connection.execute("INSERT INTO notes VALUES ('changed')")
            connection.close()

        return change

    @pytest.fixture
    def snapshot_state(self, root: Path) -> StateOf:
        return lambda resource: _state(root / resource)

    @pytest.fixture
    def tamper(self, root: Path) -> Mutate:
        def damage(resource: str) -> None:
            connection = sqlite3.connect(root / resource)
            with connection:
                connection.execute("UPDATE items SET name = 'tampered' WHERE id = 5")
            connection.close()

        return damage

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        return lambda defaults, existing: {"DatabasePath": existing}


_WRITER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], timeout=30)
connection.execute("PRAGMA journal_mode=WAL")
print("ready", flush=True)
i = 0
while True:
    with connection:
        connection.execute("INSERT INTO items (name, price, blob) VALUES (?, ?, ?)", (f"w{i}", i, b"x" * 500))
        connection.execute("UPDATE notes SET body = ? WHERE rowid = 1", (f"n{i}",))
    i += 1
"""


def test_backup_is_consistent_while_another_process_writes(tmp_path: Path, repository: Repository) -> None:
    root = tmp_path / "live"
    root.mkdir()
    _fill(root / "live.db", 5000, {})
    endpoint = EndpointSpec("live", ResourceType.SQLITE, {"root": str(root)})
    connector = SqliteConnector()
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root / "live.db")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        snapshot = connector.backup(BackupRequest(endpoint, "live.db", repository))
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    restored = connector.restore(RestoreRequest(endpoint, "live.db", repository, snapshot, {}))
    outcome = connector.validate(ValidationRequest(endpoint, restored.resource_name, repository, snapshot))
    assert outcome.valid, outcome.message
    assert outcome.details["integrity_check"] == "ok"
    assert outcome.details["rows"] >= 5002


def test_restore_refuses_paths_outside_the_root(tmp_path: Path, repository: Repository) -> None:
    root = tmp_path / "r"
    root.mkdir()
    _fill(root / "a.db", 10, {})
    endpoint = EndpointSpec("r", ResourceType.SQLITE, {"root": str(root)})
    connector = SqliteConnector()
    snapshot = connector.backup(BackupRequest(endpoint, "a.db", repository))
    for bad in ("../escape.db", "/tmp/absolute.db"):
        with pytest.raises(ConnectorError, match="relative path below the endpoint root"):
            connector.restore(RestoreRequest(endpoint, "a.db", repository, snapshot, {"DatabasePath": bad}))
    assert not (tmp_path / "escape.db").exists()


def test_discover_skips_files_that_are_not_sqlite(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "fake.db").write_bytes(b"not sqlite at all")
    _fill(root / f"{new_name()}.sqlite", 1, {"app": "x"})
    found = SqliteConnector().discover(EndpointSpec("m", ResourceType.SQLITE, {"root": str(root)}))
    assert [item.name.endswith(".sqlite") for item in found] == [True]
    assert found[0].tags == {"app": "x"}


@pytest.fixture(autouse=True)
def _no_leftover_temp_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Backups copy into a private temp directory; none may be left behind."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield
    assert list(temp.iterdir()) == [], "a temporary database copy was left behind"
