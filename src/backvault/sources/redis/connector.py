"""The Redis connector: an instance, or its logical databases, behind an endpoint.

Resources (ARN ``arn:aws:backvault:REGION:ACCOUNT:redis:ENDPOINT[/DBINDEX]``):

- ``""``, the instance: an RDB snapshot over the replication protocol (``rdb/dump.rdb``, the whole
  dataset at one instant, loadable by a fresh ``redis-server``) plus a key-by-key export of every
  non-empty database (``keys/db-NN.bvk``);
- ``"N"``, logical database N: its key-by-key export only (an RDB would carry the other databases).

Which ones discovery lists is the endpoint's ``resources`` setting ("instance" by default, or
"databases"), so a tag selection never backs up the same keys twice. Tags: the endpoint's default
tags, overridden by the fields of a hash named ``backvault:tags`` in the database (db 0 for the
instance), e.g. ``HSET backvault:tags backup daily team web``.

Backup options: ``RdbSnapshot`` "false" skips the RDB (for users not allowed to run SYNC).

Restore metadata:

    TargetDb     the database to restore into (only for a snapshot holding one database);
                 by default each database goes back to its own index
    TargetHost, TargetPort   another server (same credentials); default: the endpoint's
    Overwrite    "true": restore into databases that already hold keys, replacing keys of the same
                 name (other keys are kept); otherwise a non-empty target is refused
    RdbFile      a local path: write the RDB there (to start a fresh instance from it) instead of
                 restoring keys

Validation compares, per database, the keys without a TTL exactly and those with one at most (they
may expire after the restore), and the sampled values' digests and TTL presence.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import redis

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
from backvault.sources.redis.connection import (
    REDIS_ERRORS,
    RdbStream,
    RedisSettings,
    explain,
    open_client,
    settings_from,
)
from backvault.sources.redis.keys import DatabaseSummary, compare_database, export_database, restore_database
from backvault.sources.s3.streaming import IteratorReader, ProgressReader, buffered
from backvault.sources.streams import StreamSnapshot, find_file, iter_files, open_content

FORMAT = 1
TAGS_KEY = b"backvault:tags"
RDB_PATH = "rdb/dump.rdb"
MANIFEST_PATH = "manifest.json"
_EXPORT_PATH = re.compile(r"^keys/db-(\d+)\.bvk$")
_SHOWN_PROBLEMS = 20


def _export_path(db: int) -> str:
    return f"keys/db-{db:02d}.bvk"


def _database_index(resource_name: str) -> int | None:
    """None for the instance, the index for a database; ConnectorError for anything else."""
    if resource_name == "":
        return None
    if not resource_name.isdigit():
        raise ConnectorError(
            f'{resource_name!r} is not a Redis resource: use "" for the instance or a database '
            'index such as "3".'
        )
    return int(resource_name)


def _nonempty_databases(client: Any) -> list[int]:
    keyspace = client.info("keyspace")
    return sorted(int(name[2:]) for name in keyspace if name.startswith("db"))


def _tags(settings: RedisSettings, db: int) -> dict[str, str]:
    client = open_client(settings, db)
    try:
        fields = client.hgetall(TAGS_KEY) if client.type(TAGS_KEY) == b"hash" else {}
    finally:
        client.close()
    return {name.decode(errors="replace"): value.decode(errors="replace") for name, value in fields.items()}


class RedisConnector:
    """Redis instances and their logical databases."""

    resource_type = ResourceType.REDIS

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """PING with the endpoint's credentials."""
        settings = settings_from(endpoint)
        client = open_client(settings)
        try:
            client.ping()
        except REDIS_ERRORS as error:
            raise explain(error, settings, "connecting") from None
        finally:
            client.close()

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """The instance, or every non-empty database, with tags over the endpoint's defaults."""
        settings = settings_from(endpoint)
        client = open_client(settings)
        try:
            databases = _nonempty_databases(client)
            if settings.per_database:
                return [
                    DiscoveredResource(str(db), {**endpoint.default_tags, **_tags(settings, db)})
                    for db in databases
                ]
            memory = client.info("memory").get("used_memory_dataset")
            tags = {**endpoint.default_tags, **_tags(settings, 0)}
            return [DiscoveredResource("", tags, int(memory) if memory is not None else None)]
        except REDIS_ERRORS as error:
            raise explain(error, settings, "discovering databases") from None
        finally:
            client.close()

    # --- backup ----------------------------------------------------------------------------

    def backup(self, request: BackupRequest) -> Snapshot:
        """Save the instance (RDB + key exports) or one database (key export) as one snapshot."""
        settings = settings_from(request.endpoint)
        db = _database_index(request.resource_name)
        rdb_option = request.options.get("RdbSnapshot", "true").lower()
        if rdb_option not in ("true", "false"):
            raise ConnectorError('BackupOptions RdbSnapshot must be "true" or "false".')
        client = open_client(settings)
        try:
            server = client.info("server")
            databases = _nonempty_databases(client) if db is None else [db]
            if db is not None:
                _check_database(settings, db)
            with StreamSnapshot(request.repository, heartbeat=request.heartbeat) as builder:
                manifest: dict[str, Any] = {
                    "format": FORMAT,
                    "resource": request.resource_name,
                    "redis_version": server.get("redis_version", ""),
                    "rdb": None,
                    "databases": {},
                }
                if db is None and rdb_option == "true":
                    manifest["rdb"] = _save_rdb(builder, settings)
                for index in databases:
                    manifest["databases"][str(index)] = _save_export(builder, settings, index).to_json()
                builder.add_bytes(MANIFEST_PATH, json.dumps(manifest, sort_keys=True).encode())
                source = {
                    "type": "Redis",
                    "format": FORMAT,
                    "endpoint": request.endpoint.name,
                    "resource": request.resource_name,
                    "databases": databases,
                    "rdb": manifest["rdb"] is not None,
                }
                return builder.commit(
                    paths=[request.resource_name or "instance"], source=source, tags=request.tags
                )
        except REDIS_ERRORS as error:
            raise explain(error, settings, "backing up") from None
        finally:
            client.close()

    # --- restore ---------------------------------------------------------------------------

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """Defaults: a database snapshot goes to an empty database of the same instance."""
        defaults = {"Overwrite": "false"}
        db = _database_index(resource_name)
        if db is None:
            return defaults
        settings = settings_from(endpoint)
        client = open_client(settings)
        try:
            try:
                count = int(client.config_get("databases").get(b"databases", b"16"))
            except redis.ResponseError:  # CONFIG may be forbidden to this user: assume the default
                count = 16
            used = set(_nonempty_databases(client))
        except REDIS_ERRORS as error:
            raise explain(error, settings, "looking for an empty database") from None
        finally:
            client.close()
        free = [index for index in range(count - 1, -1, -1) if index not in used and index != db]
        defaults["TargetDb"] = str(free[0] if free else db)
        return defaults

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Write the RDB to a file, or RESTORE the keys into the target databases."""
        metadata = request.metadata
        overwrite = metadata.get("Overwrite", "false").lower()
        if overwrite not in ("true", "false"):
            raise ConnectorError('Restore metadata Overwrite must be "true" or "false".')
        if metadata.get("RdbFile"):
            return _restore_rdb_file(request, Path(metadata["RdbFile"]), overwrite == "true")
        settings = settings_from(request.endpoint)
        try:
            port = int(metadata["TargetPort"]) if metadata.get("TargetPort") else None
        except ValueError:
            raise ConnectorError("Restore metadata TargetPort must be a port number.") from None
        target = settings.elsewhere(metadata.get("TargetHost") or None, port)
        _read_manifest(request)  # a clear error for a snapshot that is not a Redis backup
        exports = _exports(request)
        plan = _plan_targets(exports, metadata.get("TargetDb", ""))
        try:
            if overwrite != "true":
                _refuse_occupied(target, plan)
            written = 0
            problems: list[str] = []
            for source_db, target_db in plan.items():
                client = open_client(target, target_db)
                try:
                    with open_content(request.repository, exports[source_db]) as stream:
                        _, size, found = restore_database(
                            client,
                            stream,
                            replace=overwrite == "true",
                            progress=functools.partial(_progress, request.heartbeat, written),
                        )
                finally:
                    client.close()
                written += size
                problems.extend(f"db {target_db}: {problem}" for problem in found)
        except REDIS_ERRORS as error:
            raise explain(error, target, "restoring keys") from None
        # One database restored on purpose (TargetDb, or a database snapshot) is named by its index.
        single = len(plan) == 1 and (metadata.get("TargetDb") or request.resource_name)
        name = str(next(iter(plan.values()))) if single else ""
        return RestoreOutcome(resource_name=name, bytes_restored=written, problems=problems[:_SHOWN_PROBLEMS])

    # --- validation and clean-up -----------------------------------------------------------

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Compare the restored database(s) with the snapshot's manifest."""
        settings = settings_from(request.endpoint)
        manifest = _read_manifest(request)
        expected: dict[str, dict[str, Any]] = manifest["databases"]
        target = _database_index(request.resource_name)
        if target is None:
            pairs = {int(db): entry for db, entry in expected.items()}
        elif len(expected) == 1:
            pairs = {target: next(iter(expected.values()))}
        elif str(target) in expected:
            pairs = {target: expected[str(target)]}
        else:
            raise ConnectorError(
                f"Snapshot {request.snapshot.short_id} holds databases {sorted(expected)}; name one of them, "
                'or "" to validate the whole instance.'
            )
        problems: list[str] = []
        try:
            for db, entry in pairs.items():
                client = open_client(settings, db)
                try:
                    problems.extend(f"db {db}: {problem}" for problem in compare_database(client, entry))
                finally:
                    client.close()
                request.heartbeat(0)
        except REDIS_ERRORS as error:
            raise explain(error, settings, "validating") from None
        details = {
            "Databases": {str(db): {"ExpectedKeys": entry["keys"]} for db, entry in pairs.items()},
            "SampledKeys": sum(len(entry["sample"]) for entry in pairs.values()),
            "Problems": problems[:_SHOWN_PROBLEMS],
        }
        if problems:
            return ValidationOutcome(False, f"{len(problems)} problem(s): {problems[0]}", details)
        keys = sum(entry["keys"] for entry in pairs.values())
        return ValidationOutcome(True, f"{keys} keys in {len(pairs)} database(s) match the manifest", details)

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Empty a database a restore test filled (a whole instance is never flushed)."""
        db = _database_index(resource_name)
        if db is None:
            raise ConnectorError("Refusing to flush a whole Redis instance; name the restored database.")
        settings = settings_from(endpoint)
        client = open_client(settings, db)
        try:
            client.flushdb()
        except REDIS_ERRORS as error:
            raise explain(error, settings, f"emptying database {db}") from None
        finally:
            client.close()


def _progress(heartbeat: Heartbeat, base: int, done: int) -> None:
    heartbeat(base + done)


def _check_database(settings: RedisSettings, db: int) -> None:
    client = open_client(settings, db)
    try:
        client.ping()  # redis-py sends SELECT first: an index out of range fails here
    except redis.ResponseError as error:
        raise ConnectorError(f"Redis endpoint {settings.name!r} has no database {db} ({error}).") from None
    finally:
        client.close()


def _save_rdb(builder: StreamSnapshot, settings: RedisSettings) -> dict[str, Any]:
    with RdbStream(settings, builder.heartbeat, base=builder.bytes_read) as rdb:
        reader = ProgressReader(rdb, builder.heartbeat, base=builder.bytes_read)
        size = builder.add_stream(RDB_PATH, buffered(reader))
    return {"size": size, "sha256": reader.sha256.hexdigest()}


def _save_export(builder: StreamSnapshot, settings: RedisSettings, db: int) -> DatabaseSummary:
    summary = DatabaseSummary(db)
    client = open_client(settings, db)
    try:
        reader = ProgressReader(
            IteratorReader(export_database(client, summary)), builder.heartbeat, base=builder.bytes_read
        )
        builder.add_stream(_export_path(db), buffered(reader))
    finally:
        client.close()
    return summary


def _read_manifest(request: RestoreRequest | ValidationRequest) -> dict[str, Any]:
    try:
        node = find_file(request.repository, request.snapshot, MANIFEST_PATH)
    except KeyError:
        raise ConnectorError(
            f"Snapshot {request.snapshot.short_id} is not a Redis backup (no manifest)."
        ) from None
    with open_content(request.repository, node) as stream:
        document: dict[str, Any] = json.loads(stream.read())
    return document


def _exports(request: RestoreRequest) -> dict[int, Any]:
    found = {}
    for path, node in iter_files(request.repository, request.snapshot):
        match = _EXPORT_PATH.match(path)
        if match:
            found[int(match.group(1))] = node
    return found


def _plan_targets(exports: dict[int, Any], target_db: str) -> dict[int, int]:
    """Source database -> target database."""
    if not target_db:
        return {db: db for db in exports}
    if not target_db.isdigit():
        raise ConnectorError(f"Restore metadata TargetDb={target_db!r} must be a database index.")
    if len(exports) > 1:
        raise ConnectorError(
            f"The snapshot holds {len(exports)} databases; TargetDb can only be used for one. Leave it "
            "empty to restore each database to its own index."
        )
    return {db: int(target_db) for db in exports}


def _refuse_occupied(settings: RedisSettings, plan: dict[int, int]) -> None:
    for target_db in plan.values():
        client = open_client(settings, target_db)
        try:
            size = int(client.dbsize())
        finally:
            client.close()
        if size:
            raise ConnectorError(
                f"Refusing to restore into database {target_db} of {settings.where}: it holds {size} keys. "
                'Choose an empty TargetDb, or set Overwrite to "true".'
            )


def _restore_rdb_file(request: RestoreRequest, path: Path, overwrite: bool) -> RestoreOutcome:
    try:
        node = find_file(request.repository, request.snapshot, RDB_PATH)
    except KeyError:
        raise ConnectorError(
            f"Snapshot {request.snapshot.short_id} has no RDB file (a database backup)."
        ) from None
    if path.exists() and not overwrite:
        raise ConnectorError(f'{path} already exists: choose another RdbFile, or set Overwrite to "true".')
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    written = 0
    with open_content(request.repository, node) as stream, open(temporary, "wb") as out:
        while piece := stream.read(1 << 20):
            out.write(piece)
            written += len(piece)
            request.heartbeat(written)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    return RestoreOutcome(resource_name="", bytes_restored=written)
