"""PostgreSQL connector: one resource per database, dumped consistently by pg_dump, restored to a new name.

Discovery lists every database that allows connections (templates never; the maintenance database
``postgres`` unless the endpoint's filters say otherwise, see ``session``). Tags come from the
database comment when it is JSON, merged over the endpoint's default tags::

    COMMENT ON DATABASE shop IS '{"backvault": {"tags": {"backup": "daily", "team": "web"}}}';
    COMMENT ON DATABASE shop IS '{"backup": "daily"}';      -- a plain JSON object works too

A comment that is not JSON is an ordinary description and carries no tags.

Backup: one connection opens a REPEATABLE READ transaction and exports its snapshot
(``pg_export_snapshot``); ``pg_dump --snapshot`` dumps exactly that state while, in parallel, the same
transaction counts and checksums every table for the manifest. The dump is the custom format without
compression (``-Fc -Z0``): measured on pgbench data, it deduplicates across runs as well as the plain
format (unchanged tables give identical bytes; the repository compresses with zstd), while zlib
blocks (the default ``-Z``) change whole chunks and defeat dedup; unlike plain SQL it lets pg_restore
restore with ``--no-owner``. The dump streams from pg_dump's stdout into the repository: no local copy.

Restore: Metadata ``{"DatabaseName": "new_name"}`` (default ``<name>_restored_<time>_<random>``);
optional ``"NoOwner": "true"`` (objects owned by the restoring user, for another server without the
roles). The target must not exist or be empty; it is created with the original's encoding and
locale, and pg_restore runs as one transaction, so a failed restore leaves nothing half-loaded (a
database this restore created is dropped again).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

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
from backvault.sources.dump_process import DumpProcess, run_with_input, tool_path
from backvault.sources.postgresql.session import (
    SYSTEM_DATABASES,
    Settings,
    connect,
    database_conninfo,
    database_exists,
    table_digests,
    user_relation_count,
)
from backvault.sources.streams import StreamSnapshot, find_file, open_content

ENGINE = "postgresql"
DUMP_PATH = "database.dump"
GLOBALS_PATH = "globals.sql"
_IDENTIFIER_BYTES = 63
# While the manifest is still being computed after the dump ended, the lease is renewed this often.
_WAIT_BEAT_SECONDS = 2.0


class PostgresqlConnector:
    """Discover, back up (pg_dump), restore (pg_restore) and validate PostgreSQL databases."""

    resource_type = ResourceType.POSTGRESQL

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """Connect to the maintenance database and find pg_dump; ConnectorError naming the problem."""
        settings = Settings(endpoint)
        tool_path(["pg_dump"], "backing up PostgreSQL")
        with connect(settings) as connection:
            connection.execute("SELECT 1")

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """Every database that allows connections and passes the endpoint's filters, with tags."""
        settings = Settings(endpoint)
        with connect(settings) as connection:
            rows = connection.execute(
                "SELECT d.datname, shobj_description(d.oid, 'pg_database'), "
                "CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END "
                "FROM pg_database d WHERE NOT d.datistemplate AND d.datallowconn ORDER BY d.datname"
            ).fetchall()
        return [
            DiscoveredResource(
                name, merge_tags(endpoint.default_tags, tags_from_comment(comment)), size and int(size)
            )
            for name, comment, size in rows
            if settings.wanted(name)
        ]

    def backup(self, request: BackupRequest) -> Snapshot:
        """Dump the database from an exported snapshot and save it with its manifest."""
        settings = Settings(request.endpoint)
        database = request.resource_name
        pg_dump = tool_path(["pg_dump"], "backing up PostgreSQL")
        with connect(settings, database) as holder:
            try:
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                snapshot_row = holder.execute("SELECT pg_export_snapshot()").fetchone()
                properties = _database_properties(holder, database)
            except psycopg.Error as error:
                raise settings.error(f"starting the backup of {database!r}", error) from None
            assert snapshot_row is not None
            manifest = _ManifestThread(holder)
            argv = [pg_dump, "--format=custom", "--compress=0", "--no-password"]
            argv += ["--snapshot", str(snapshot_row[0]), "--dbname", database_conninfo(database)]
            environment = settings.tool_environment()
            secrets = [settings.password]
            try:
                with StreamSnapshot(request.repository, heartbeat=request.heartbeat) as builder:
                    manifest.start()
                    with DumpProcess(
                        argv,
                        tool="pg_dump",
                        environment=environment,
                        heartbeat=request.heartbeat,
                        secrets=secrets,
                    ) as dump:
                        builder.add_stream(DUMP_PATH, dump.as_stream())
                        dump.finish()
                    tables = manifest.wait(lambda: request.heartbeat(builder.bytes_read))
                    if settings.include_globals:
                        self._add_globals(builder, settings, request)
                    builder.add_bytes(
                        MANIFEST_PATH,
                        manifest_bytes(ENGINE, database, tables, datetime.now(UTC), **properties),
                    )
                    return builder.commit(
                        paths=[database],
                        source={
                            "type": ResourceType.POSTGRESQL.value,
                            "endpoint": request.endpoint.name,
                            "resource": database,
                            "format": "pg_dump custom format, uncompressed",
                            "server_version": properties["server_version"],
                        },
                        tags=request.tags,
                    )
            finally:
                manifest.cancel()

    def _add_globals(self, builder: StreamSnapshot, settings: Settings, request: BackupRequest) -> None:
        pg_dumpall = tool_path(["pg_dumpall"], "saving PostgreSQL roles and tablespaces")
        # --no-role-passwords: a non-superuser may not read them, and they should not sit in every backup
        argv = [pg_dumpall, "--globals-only", "--no-role-passwords", "--no-password"]
        argv += ["--dbname", database_conninfo(settings.maintenance_database)]
        with DumpProcess(
            argv,
            tool="pg_dumpall",
            environment=settings.tool_environment(),
            heartbeat=request.heartbeat,
            secrets=[settings.password],
            bytes_before=builder.bytes_read,
        ) as dump:
            builder.add_stream(GLOBALS_PATH, dump.as_stream())
            dump.finish()

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """``DatabaseName`` (a new database) and ``NoOwner`` ("false": keep the original owners)."""
        stamp = snapshot.time.strftime("%Y%m%d%H%M%S")
        suffix = f"_restored_{stamp}_{uuid.uuid4().hex[:4]}"
        base = resource_name.encode()[: _IDENTIFIER_BYTES - len(suffix)].decode(errors="ignore")
        return {"DatabaseName": base + suffix, "NoOwner": "false"}

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Create the target database (or use an empty one) and load the dump into it in one transaction."""
        settings = Settings(request.endpoint)
        defaults = self.restore_metadata(request.endpoint, request.resource_name, request.snapshot)
        target = request.metadata.get("DatabaseName") or defaults["DatabaseName"]
        no_owner = request.metadata.get("NoOwner", "false").strip().lower() == "true"
        _check_database_name(target)
        manifest = load_manifest(request.repository, request.snapshot, ENGINE)
        try:
            node = find_file(request.repository, request.snapshot, DUMP_PATH)
        except KeyError:
            raise ConnectorError(f"recovery point {request.snapshot.short_id} holds no {DUMP_PATH}") from None
        pg_restore = tool_path(["pg_restore"], "restoring PostgreSQL")
        created = _prepare_target(settings, target, manifest)
        argv = [pg_restore, "--single-transaction", "--exit-on-error", "--no-password"]
        argv += ["--dbname", database_conninfo(target)]
        if no_owner:
            argv += ["--no-owner", "--no-acl"]
        try:
            with open_content(request.repository, node) as source:
                written = run_with_input(
                    argv,
                    source,
                    tool="pg_restore",
                    environment=settings.tool_environment(),
                    heartbeat=request.heartbeat,
                    secrets=[settings.password],
                )
        except BaseException:
            if created:
                _drop_database(settings, target)  # ours and half-loaded at most: leave nothing behind
            raise
        return RestoreOutcome(target, written)

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Recount and re-checksum every table of the restored database against the manifest."""
        settings = Settings(request.endpoint)
        manifest = load_manifest(request.repository, request.snapshot, ENGINE)
        with connect(settings, request.resource_name) as connection:
            try:
                connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                actual = table_digests(connection, lambda: request.heartbeat(0))
                connection.execute("COMMIT")
            except psycopg.Error as error:
                raise settings.error(f"validating {request.resource_name!r}", error) from None
        expected = manifest["tables"]
        return validation_outcome(request.resource_name, expected, compare_tables(expected, actual))

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Drop a database a restore test created (disconnecting its sessions)."""
        settings = Settings(endpoint)
        if resource_name in SYSTEM_DATABASES or resource_name == settings.maintenance_database:
            raise ConnectorError(f"refusing to drop the system database {resource_name!r}")
        _drop_database(settings, resource_name)


class _ManifestThread:
    """Computes the table digests in the snapshot-holding transaction while pg_dump streams."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection
        self._result: dict[str, dict[str, Any]] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pg-manifest", daemon=True)

    def start(self) -> None:
        """Begin counting."""
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = table_digests(self._connection)
        except BaseException as error:  # handed to the caller's thread by wait()
            self._error = error

    def wait(self, beat: Any) -> dict[str, dict[str, Any]]:
        """Wait for the digests, calling ``beat`` every few seconds; ConnectorError if they failed."""
        while self._thread.is_alive():
            self._thread.join(_WAIT_BEAT_SECONDS)
            if self._thread.is_alive():
                beat()
        if self._error is not None:
            raise ConnectorError(f"counting the tables for the manifest failed: {self._error}")
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop a running count (the backup failed or was stopped) and wait for the thread."""
        if self._thread.is_alive():
            # on failure: the connection is closed next anyway, which ends the query too
            with contextlib.suppress(psycopg.Error):
                self._connection.cancel_safe(timeout=10)
            self._thread.join(30)


def _database_properties(connection: psycopg.Connection[Any], database: str) -> dict[str, Any]:
    row = connection.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, current_setting('server_version') "
        "FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return {"encoding": row[0], "collate": row[1], "ctype": row[2], "server_version": row[3]}


def _check_database_name(name: str) -> None:
    if not name.strip() or "\x00" in name:
        raise ConnectorError("Metadata DatabaseName must be a non-empty database name")
    if len(name.encode()) > _IDENTIFIER_BYTES:
        raise ConnectorError(
            f"Metadata DatabaseName {name!r} is longer than PostgreSQL's {_IDENTIFIER_BYTES} bytes"
        )
    if name in SYSTEM_DATABASES:
        raise ConnectorError(f"cannot restore into the system database {name!r}; choose a new DatabaseName")


def _prepare_target(settings: Settings, target: str, manifest: dict[str, Any]) -> bool:
    """Create the target database, or accept an existing empty one; True when it was created here."""
    with connect(settings) as connection:
        exists = database_exists(connection, target)
    if exists:
        with connect(settings, target) as connection:
            if user_relation_count(connection) > 0:
                raise ConnectorError(
                    f"restore target database {target!r} already exists and is not empty; "
                    "choose a new DatabaseName (backvault never restores over existing data)"
                )
        return False
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target))
    with connect(settings) as connection:
        try:
            connection.execute(
                create
                + sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                    sql.Literal(manifest.get("encoding", "UTF8")),
                    sql.Literal(manifest.get("collate", "C")),
                    sql.Literal(manifest.get("ctype", "C")),
                )
            )
        except psycopg.errors.DuplicateDatabase:
            raise ConnectorError(
                f"restore target database {target!r} was created meanwhile; choose a new DatabaseName"
            ) from None
        except psycopg.Error:
            try:
                connection.execute(create)  # this server lacks the original locale: use its defaults
            except psycopg.Error as error:
                raise settings.error(f"creating database {target!r}", error) from None
    return True


def _drop_database(settings: Settings, database: str) -> None:
    with connect(settings) as connection:
        try:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        except psycopg.Error as error:
            raise settings.error(f"dropping database {database!r}", error) from None
