"""SQLite connector: database files below a root directory, copied with SQLite's online backup API.

Endpoint connection: ``{"root": "/srv/app/data"}`` (optional ``"temp_directory"``). Resources are the
files below the root whose names end in ``.db``, ``.sqlite`` or ``.sqlite3`` and that start with the
SQLite header, named by their slash-separated path relative to the root (``app/main.db``).

Tags: a table ``backvault_tags(key TEXT PRIMARY KEY, value TEXT)`` inside the database, merged over the
endpoint's default tags. Reading it is optional: a database without the table simply has none.

Backup, and why it uses a temporary copy: only SQLite's online backup API (``Connection.backup``)
gives a consistent image while other processes keep writing (it restarts by itself when a writer
changes a page it already copied, and it includes committed WAL content that the main file lacks),
and that API needs a destination *database*. The choices are an in-memory database (RAM as large as
the database, unbounded) or a temporary file. backvault uses a temporary file in a private 0700
directory, deletes it as soon as it has been streamed into the repository (also on errors), and
this is the one connector allowed a local copy. The manifest (row count and checksum per table) is
computed from that same copy, so it describes exactly the bytes stored.

Restore writes a new file (Metadata ``{"DatabasePath": "rel/path.db"}``, relative to the root) and
never replaces an existing one. Validation runs ``PRAGMA integrity_check`` and compares the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

from backvault.domain.arn import ResourceType
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    DiscoveredResource,
    EndpointSpec,
    Heartbeat,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
    ValidationRequest,
)
from backvault.sources.database_manifest import (
    MANIFEST_PATH,
    compare_tables,
    load_manifest,
    manifest_bytes,
    merge_tags,
    validation_outcome,
)
from backvault.sources.dump_process import HeartbeatReader
from backvault.sources.streams import StreamSnapshot, find_file, open_content

ENGINE = "sqlite"
DATABASE_PATH = "database.sqlite3"
TAGS_TABLE = "backvault_tags"
SUFFIXES = (".db", ".sqlite", ".sqlite3")
_HEADER = b"SQLite format 3\x00"
_PAGES_PER_STEP = 4096
_COPY_BLOCK = 1 << 20


class SqliteConnector:
    """Discover, back up, restore and validate SQLite database files below a root directory."""

    resource_type = ResourceType.SQLITE

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """Raise ConnectorError unless the root is a readable directory."""
        _root(endpoint)

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """Every SQLite database file below the root, with the tags in its backvault_tags table."""
        root = _root(endpoint)
        found: list[DiscoveredResource] = []
        for path in sorted(_database_files(root)):
            name = path.relative_to(root).as_posix()
            native = _read_tags(path)
            found.append(
                DiscoveredResource(name, merge_tags(endpoint.default_tags, native), path.stat().st_size)
            )
        return found

    def backup(self, request: BackupRequest) -> Snapshot:
        """Copy the database with the online backup API, then stream the copy and its manifest."""
        source = _existing_database(request.endpoint, request.resource_name)
        temp_directory = request.endpoint.connection.get("temp_directory")
        with tempfile.TemporaryDirectory(prefix="backvault-sqlite-", dir=temp_directory) as private:
            copy = Path(private) / "copy.sqlite3"  # TemporaryDirectory is 0700: only we can read it
            _online_copy(source, copy, request.heartbeat)
            tables = _table_digests(copy)
            taken_at = datetime.now(UTC)
            with StreamSnapshot(request.repository, heartbeat=request.heartbeat) as builder:
                with open(copy, "rb") as stream:
                    builder.add_stream(DATABASE_PATH, HeartbeatReader(stream, request.heartbeat).as_stream())
                builder.add_bytes(
                    MANIFEST_PATH,
                    manifest_bytes(
                        ENGINE, request.resource_name, tables, taken_at, page_size=_page_size(copy)
                    ),
                )
                return builder.commit(
                    paths=[request.resource_name],
                    source={
                        "type": ResourceType.SQLITE.value,
                        "endpoint": request.endpoint.name,
                        "resource": request.resource_name,
                        "format": "sqlite3 database file (online backup API)",
                    },
                    tags=request.tags,
                )

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """``DatabasePath``: a new file next to the original (relative to the root)."""
        original = Path(resource_name)
        stamp = snapshot.time.strftime("%Y%m%d%H%M%S")
        new_name = f"{original.stem}-restored-{stamp}-{uuid.uuid4().hex[:6]}{original.suffix or '.db'}"
        return {"DatabasePath": original.with_name(new_name).as_posix()}

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Write the backed-up database to a new file below the root (never over an existing one)."""
        root = _root(request.endpoint)
        target_name = (
            request.metadata.get("DatabasePath")
            or self.restore_metadata(request.endpoint, request.resource_name, request.snapshot)[
                "DatabasePath"
            ]
        )
        target = _inside_root(root, target_name)
        if target.exists():
            raise ConnectorError(f"restore target {target_name} already exists; choose a new DatabasePath")
        try:
            node = find_file(request.repository, request.snapshot, DATABASE_PATH)
        except KeyError:
            raise ConnectorError(
                f"recovery point {request.snapshot.short_id} is not a SQLite backup"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        written = 0
        try:
            with open_content(request.repository, node) as source, open(temp, "xb") as output:
                while block := source.read(_COPY_BLOCK):
                    output.write(block)
                    written += len(block)
                    request.heartbeat(written)
                output.flush()
                os.fsync(output.fileno())
            _check_integrity(temp)
            # link() refuses an existing name, unlike rename(): a file created meanwhile is not clobbered
            try:
                os.link(temp, target)
            except FileExistsError:
                raise ConnectorError(
                    f"restore target {target_name} appeared during the restore; choose a new DatabasePath"
                ) from None
        finally:
            temp.unlink(missing_ok=True)
        return RestoreOutcome(target.relative_to(root).as_posix(), written)

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """PRAGMA integrity_check, then row counts and checksums per table against the manifest."""
        manifest = load_manifest(request.repository, request.snapshot, ENGINE)
        path = _existing_database(request.endpoint, request.resource_name)
        try:
            integrity = _integrity_messages(path)
        except sqlite3.DatabaseError as error:
            return ValidationOutcome(False, f"{request.resource_name} cannot be read: {error}")
        if integrity != ["ok"]:
            return ValidationOutcome(
                False,
                f"{request.resource_name} fails PRAGMA integrity_check: {'; '.join(integrity[:3])}",
                {"integrity_check": integrity},
            )
        expected = manifest["tables"]
        problems = compare_tables(expected, _table_digests(path))
        return validation_outcome(request.resource_name, expected, problems, integrity_check="ok")

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Remove a restored database file and its journal files."""
        path = _inside_root(_root(endpoint), resource_name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# --- files ---------------------------------------------------------------------------------------


def _root(endpoint: EndpointSpec) -> Path:
    value = endpoint.connection.get("root")
    if not value:
        raise ConnectorError(
            f"endpoint {endpoint.name}: set connection.root to the directory holding the databases"
        )
    root = Path(str(value))
    if not root.is_absolute():
        raise ConnectorError(f"endpoint {endpoint.name}: connection.root {value!r} must be an absolute path")
    if not root.is_dir():
        raise ConnectorError(
            f"endpoint {endpoint.name}: connection.root {value} is not an existing directory"
        )
    if not os.access(root, os.R_OK | os.X_OK):
        raise ConnectorError(
            f"endpoint {endpoint.name}: connection.root {value} is not readable by this worker"
        )
    return root.resolve()


def _inside_root(root: Path, relative: str) -> Path:
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise ConnectorError(f"database path {relative!r} must be a relative path below the endpoint root")
    return root / relative


def _database_files(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in files:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                path = Path(directory) / name
                if _is_sqlite(path):
                    yield path


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_HEADER)) == _HEADER
    except OSError:
        return False


def _existing_database(endpoint: EndpointSpec, resource_name: str) -> Path:
    path = _inside_root(_root(endpoint), resource_name)
    if not path.is_file() or not _is_sqlite(path):
        raise ConnectorError(
            f"{resource_name} is not a SQLite database below {endpoint.connection.get('root')}"
        )
    return path


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    # mode=ro: looking at a database must never create or change it
    connection = sqlite3.connect(f"file:{pathname2url(str(path))}?mode=ro", uri=True, timeout=30)
    try:
        yield connection
    finally:
        connection.close()


def _read_tags(path: Path) -> dict[str, str]:
    try:
        with _read_only(path) as connection:
            rows = connection.execute(f"SELECT key, value FROM {TAGS_TABLE}").fetchall()
    except sqlite3.DatabaseError:
        return {}  # no tags table (or unreadable right now): the database still gets the defaults
    return {str(key): str(value) for key, value in rows if key is not None and value is not None}


# --- copying and digests -------------------------------------------------------------------------


def _online_copy(source: Path, destination: Path, heartbeat: Heartbeat) -> None:
    def progress(_status: int, remaining: int, total: int) -> None:
        heartbeat(0)  # a slow copy must still renew the job's lease (raising stops the copy)

    try:
        with _read_only(source) as reader:
            target = sqlite3.connect(destination)
            try:
                reader.backup(target, pages=_PAGES_PER_STEP, progress=progress)
            finally:
                target.close()
    except sqlite3.DatabaseError as error:
        raise ConnectorError(f"SQLite could not copy {source.name}: {error}") from None


def _page_size(path: Path) -> int:
    with _read_only(path) as connection:
        return int(connection.execute("PRAGMA page_size").fetchone()[0])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_digests(path: Path) -> dict[str, dict[str, Any]]:
    """Row count and an order-independent checksum of every table (computed here: SQLite has no hash SQL)."""
    tables: dict[str, dict[str, Any]] = {}
    with _read_only(path) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        for name in names:
            count = 0
            total = 0
            for row in connection.execute(f"SELECT * FROM {_quote(name)}"):
                count += 1
                total += int.from_bytes(hashlib.blake2b(_canonical(row), digest_size=16).digest(), "big")
            tables[name] = {"rows": count, "checksum": f"{total % (1 << 128):032x}"}
    return tables


def _canonical(row: tuple[Any, ...]) -> bytes:
    # type-tagged so 1, 1.0, '1' and x'31' hash differently
    values = [
        ["b", value.hex()] if isinstance(value, bytes) else [type(value).__name__, value] for value in row
    ]
    return json.dumps(values, separators=(",", ":")).encode()


def _integrity_messages(path: Path) -> list[str]:
    with _read_only(path) as connection:
        return [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]


def _check_integrity(path: Path) -> None:
    try:
        messages = _integrity_messages(path)
    except sqlite3.DatabaseError as error:
        raise ConnectorError(f"the restored database cannot be opened: {error}") from None
    if messages != ["ok"]:
        raise ConnectorError(f"the restored database fails PRAGMA integrity_check: {'; '.join(messages[:3])}")
