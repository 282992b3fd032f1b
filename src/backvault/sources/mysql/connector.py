"""MySQL/MariaDB connector: one resource per database, dumped by mariadb-dump, restored to a new name.

Discovery lists every database except the system schemas (``mysql``, ``sys``, ``information_schema``,
``performance_schema``), filtered by the endpoint's patterns (see ``session``). Tags, merged over the
endpoint's default tags, come from two documented places (the table wins on a shared key):

- the schema comment as JSON, on MariaDB 10.5+:
  ``CREATE DATABASE shop COMMENT '{"backvault": {"tags": {"backup": "daily"}}}'`` (or a plain object);
- a table ``backvault_tags (tag_key VARCHAR(128) PRIMARY KEY, tag_value VARCHAR(256))`` in the
  database, for MySQL, which has no schema comments.

Backup: ``--single-transaction --routines --events --triggers --hex-blob --skip-dump-date``, without
``--databases`` so the dump names no database and restores under any name; ``--skip-dump-date``
keeps the bytes of an unchanged database identical, so it deduplicates. MySQL cannot share a
snapshot between connections, so for the manifest to describe exactly the dumped state the
connector holds ``FLUSH TABLES WITH READ LOCK`` only while both its own consistent-snapshot
transaction and the tool's start (until the dump's first table, typically milliseconds; this is
what ``mysqldump --master-data`` does too). It needs the RELOAD privilege; set
``"consistent_manifest": false`` to skip the lock, and validation may then report rows written
during the backup. Consistency holds for transactional tables (InnoDB), as with any
``--single-transaction`` dump.

Restore: Metadata ``{"DatabaseName": "new_name"}`` (default ``<name>_restored_<time>_<random>``);
the target must not exist or be empty. It is created with the original's character set and
collation; scheduled events in the copy are disabled unless ``"KeepEventsEnabled": "true"``, so a
restored copy does not start running jobs. A failed restore drops the database it created.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pymysql

from backvault.domain.arn import ResourceType
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    DiscoveredResource,
    EndpointSpec,
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
    tags_from_comment,
    validation_outcome,
)
from backvault.sources.dump_process import DumpProcess, child_environment, run_with_input, tool_path
from backvault.sources.mysql.session import (
    SYSTEM_DATABASES,
    Settings,
    connect,
    query,
    quote_name,
    table_digests,
)
from backvault.sources.streams import StreamSnapshot, find_file, open_content

ENGINE = "mysql"
DUMP_PATH = "database.sql"
TAGS_TABLE = "backvault_tags"
DUMP_TOOLS = ["mariadb-dump", "mysqldump"]
CLIENT_TOOLS = ["mariadb", "mysql"]
_NAME_LIMIT = 64
# Lines the dump writes only after its transaction started: from then on the global lock can go.
_STARTED_MARKERS = (b"\n-- Table structure for table", b"\n-- Dumping routines", b"\n-- Dumping events")
_MARKER_OVERLAP = max(len(marker) for marker in _STARTED_MARKERS)


class MysqlConnector:
    """Discover, back up (mariadb-dump), restore (mariadb client) and validate MySQL/MariaDB databases."""

    resource_type = ResourceType.MYSQL

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """Connect and find the dump tool; ConnectorError naming the problem."""
        settings = Settings(endpoint)
        tool_path(DUMP_TOOLS, "backing up MySQL")
        with connect(settings) as connection:
            query(connection, "SELECT 1")

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """Every non-system database passing the filters, with tags from its comment and tags table."""
        settings = Settings(endpoint)
        with connect(settings) as connection:
            comments = _schema_comments(connection)
            sizes = dict(
                query(
                    connection,
                    "SELECT TABLE_SCHEMA, SUM(COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0)) "
                    "FROM information_schema.TABLES GROUP BY TABLE_SCHEMA",
                )
            )
            with_tag_tables = {
                str(row[0])
                for row in query(
                    connection,
                    "SELECT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_NAME = %s",
                    TAGS_TABLE,
                )
            }
            found = []
            for database, comment in sorted(comments.items()):
                if not settings.wanted(database):
                    continue
                native = tags_from_comment(comment)
                if database in with_tag_tables:
                    native.update(_table_tags(connection, database))
                size = sizes.get(database)
                found.append(
                    DiscoveredResource(
                        database,
                        merge_tags(endpoint.default_tags, native),
                        int(size) if size is not None else None,
                    )
                )
        return found

    def backup(self, request: BackupRequest) -> Snapshot:
        """Dump the database in one transaction and save it with a manifest of the same state."""
        settings = Settings(request.endpoint)
        database = request.resource_name
        dump_tool = tool_path(DUMP_TOOLS, "backing up MySQL")
        with (
            connect(settings) as locker,
            connect(settings, database) as reader,
            settings.option_file() as options,
        ):
            properties = _database_properties(reader, database, settings)
            if settings.consistent_manifest:
                _global_read_lock(locker, settings)
            try:
                query(reader, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                query(reader, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                argv = [f"--defaults-extra-file={options}", "--single-transaction", "--routines", "--events"]
                argv += ["--triggers", "--hex-blob", "--skip-dump-date", "--no-tablespaces"]
                argv += ["--default-character-set=utf8mb4", "--", database]
                with StreamSnapshot(request.repository, heartbeat=request.heartbeat) as builder:
                    with DumpProcess(
                        [dump_tool, *argv],
                        tool=dump_tool.rsplit("/", 1)[-1],
                        environment=child_environment({}),
                        heartbeat=request.heartbeat,
                        secrets=[settings.password],
                    ) as dump:
                        stream = _AfterStart(dump, lambda: _unlock(locker))
                        builder.add_stream(DUMP_PATH, stream.as_stream())
                        dump.finish()
                    tables = table_digests(reader, database, lambda: request.heartbeat(builder.bytes_read))
                    query(reader, "COMMIT")
                    builder.add_bytes(
                        MANIFEST_PATH,
                        manifest_bytes(ENGINE, database, tables, datetime.now(UTC), **properties),
                    )
                    return builder.commit(
                        paths=[database],
                        source={
                            "type": ResourceType.MYSQL.value,
                            "endpoint": request.endpoint.name,
                            "resource": database,
                            "format": "SQL dump (--single-transaction, routines, events, triggers)",
                            "server_version": properties["server_version"],
                        },
                        tags=request.tags,
                    )
            except pymysql.Error as error:
                raise settings.error(f"backing up {database!r}", error) from None
            finally:
                _unlock(locker)

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """``DatabaseName`` (a new database) and ``KeepEventsEnabled`` ("false")."""
        stamp = snapshot.time.strftime("%Y%m%d%H%M%S")
        suffix = f"_restored_{stamp}_{uuid.uuid4().hex[:4]}"
        return {
            "DatabaseName": resource_name[: _NAME_LIMIT - len(suffix)] + suffix,
            "KeepEventsEnabled": "false",
        }

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Create the target database (or use an empty one) and load the dump into it."""
        settings = Settings(request.endpoint)
        defaults = self.restore_metadata(request.endpoint, request.resource_name, request.snapshot)
        target = request.metadata.get("DatabaseName") or defaults["DatabaseName"]
        keep_events = request.metadata.get("KeepEventsEnabled", "false").strip().lower() == "true"
        _check_database_name(target)
        manifest = load_manifest(request.repository, request.snapshot, ENGINE)
        try:
            node = find_file(request.repository, request.snapshot, DUMP_PATH)
        except KeyError:
            raise ConnectorError(f"recovery point {request.snapshot.short_id} holds no {DUMP_PATH}") from None
        client = tool_path(CLIENT_TOOLS, "restoring MySQL")
        created = _prepare_target(settings, target, manifest)
        try:
            with settings.option_file() as options, open_content(request.repository, node) as source:
                argv = [client, f"--defaults-extra-file={options}", "--default-character-set=utf8mb4"]
                argv += ["--binary-mode", f"--database={target}"]
                written = run_with_input(
                    argv,
                    source,
                    tool=client.rsplit("/", 1)[-1],
                    environment=child_environment({}),
                    heartbeat=request.heartbeat,
                    secrets=[settings.password],
                )
            if not keep_events:
                _disable_events(settings, target)
        except BaseException:
            if created:
                with contextlib.suppress(ConnectorError):
                    _drop_database(settings, target)  # ours and half-loaded at most
            raise
        return RestoreOutcome(target, written)

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Recount and re-checksum every table of the restored database against the manifest."""
        settings = Settings(request.endpoint)
        manifest = load_manifest(request.repository, request.snapshot, ENGINE)
        with connect(settings, request.resource_name) as connection:
            try:
                query(connection, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                actual = table_digests(connection, request.resource_name, lambda: request.heartbeat(0))
                query(connection, "COMMIT")
            except pymysql.Error as error:
                raise settings.error(f"validating {request.resource_name!r}", error) from None
        expected = manifest["tables"]
        details = {} if manifest.get("consistent", True) else {"note": "manifest taken without the read lock"}
        return validation_outcome(
            request.resource_name, expected, compare_tables(expected, actual), **details
        )

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Drop a database a restore test created."""
        if resource_name.lower() in SYSTEM_DATABASES:
            raise ConnectorError(f"refusing to drop the system database {resource_name!r}")
        _drop_database(Settings(endpoint), resource_name)


class _AfterStart:
    """Reads the dump; once its transaction has certainly started, calls ``started`` (releasing the lock)."""

    def __init__(self, dump: DumpProcess, started: Any) -> None:
        self._dump = dump
        self._started = started
        self._tail = b""
        self._done = False

    def as_stream(self) -> Any:
        """This reader, for ``StreamSnapshot.add_stream``."""
        return self

    def readinto(self, buffer: memoryview) -> int:
        """Pass the dump's bytes through, watching for the first marker (or the end)."""
        count = self._dump.readinto(buffer)
        if not self._done:
            window = self._tail + bytes(buffer[:count])
            if count == 0 or any(marker in window for marker in _STARTED_MARKERS):
                self._done = True
                self._started()
            self._tail = window[-_MARKER_OVERLAP:]  # a marker may straddle two reads
        return count


def _schema_comments(connection: pymysql.connections.Connection[Any]) -> dict[str, str | None]:
    try:
        rows = query(connection, "SELECT SCHEMA_NAME, SCHEMA_COMMENT FROM information_schema.SCHEMATA")
    except pymysql.err.OperationalError:  # MySQL: no schema comments
        rows = [
            (row[0], None) for row in query(connection, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        ]
    return {str(name): (str(comment) if comment else None) for name, comment in rows}


def _table_tags(connection: pymysql.connections.Connection[Any], database: str) -> dict[str, str]:
    try:
        rows = query(connection, f"SELECT tag_key, tag_value FROM {quote_name(database)}.{TAGS_TABLE}")
    except pymysql.Error:
        return {}  # a table of another shape (or no privilege): the database keeps its other tags
    return {str(key): str(value) for key, value in rows if key is not None and value is not None}


def _database_properties(
    connection: pymysql.connections.Connection[Any], database: str, settings: Settings
) -> dict[str, Any]:
    rows = query(
        connection,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, VERSION() "
        "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        database,
    )
    if not rows:
        raise ConnectorError(f"database {database!r} does not exist on {settings.where}")
    charset, collation, version = rows[0]
    return {
        "charset": charset,
        "collation": collation,
        "server_version": version,
        "consistent": settings.consistent_manifest,
    }


def _global_read_lock(connection: pymysql.connections.Connection[Any], settings: Settings) -> None:
    try:
        query(connection, "SET SESSION lock_wait_timeout = %s", settings.lock_wait_timeout)
        query(connection, "FLUSH TABLES WITH READ LOCK")
    except pymysql.Error as error:
        raise ConnectorError(
            f"{settings.where}: could not take the brief global read lock that makes the manifest match the "
            f"dump ({settings.error('FLUSH TABLES WITH READ LOCK', error)}); grant RELOAD to the backup user "
            'or set "consistent_manifest": false on the endpoint'
        ) from None


def _unlock(connection: pymysql.connections.Connection[Any]) -> None:
    with contextlib.suppress(pymysql.Error):
        query(connection, "UNLOCK TABLES")


def _check_database_name(name: str) -> None:
    if not name.strip() or "\x00" in name or name != name.rstrip():
        raise ConnectorError("Metadata DatabaseName must be a database name without trailing blanks")
    if len(name) > _NAME_LIMIT:
        raise ConnectorError(
            f"Metadata DatabaseName {name!r} is longer than MySQL's {_NAME_LIMIT} characters"
        )
    if name.lower() in SYSTEM_DATABASES:
        raise ConnectorError(f"cannot restore into the system database {name!r}; choose a new DatabaseName")


def _prepare_target(settings: Settings, target: str, manifest: dict[str, Any]) -> bool:
    """Create the target database, or accept an existing empty one; True when it was created here."""
    with connect(settings) as connection:
        exists = query(
            connection,
            "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s), "
            "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s) + "
            "(SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s)",
            target,
            target,
            target,
        )[0]
        if exists[0]:
            if exists[1]:
                raise ConnectorError(
                    f"restore target database {target!r} already exists and is not empty; "
                    "choose a new DatabaseName (backvault never restores over existing data)"
                )
            return False
        options = ""
        if manifest.get("charset") and manifest.get("collation"):
            charset, collation = quote_name(manifest["charset"]), quote_name(manifest["collation"])
            options = f" CHARACTER SET {charset} COLLATE {collation}"
        try:
            query(connection, f"CREATE DATABASE {quote_name(target)}{options}")
        except pymysql.err.ProgrammingError as error:
            if error.args and error.args[0] == 1007:  # created meanwhile
                raise ConnectorError(
                    f"restore target database {target!r} was created meanwhile; choose a new DatabaseName"
                ) from None
            raise settings.error(f"creating database {target!r}", error) from None
        except pymysql.Error as error:
            raise settings.error(f"creating database {target!r}", error) from None
    return True


def _disable_events(settings: Settings, database: str) -> None:
    with connect(settings) as connection:
        events = query(
            connection, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", database
        )
        for (name,) in events:
            query(connection, f"ALTER EVENT {quote_name(database)}.{quote_name(str(name))} DISABLE")


def _drop_database(settings: Settings, database: str) -> None:
    with connect(settings) as connection:
        try:
            query(connection, f"DROP DATABASE IF EXISTS {quote_name(database)}")
        except pymysql.Error as error:
            raise settings.error(f"dropping database {database!r}", error) from None
