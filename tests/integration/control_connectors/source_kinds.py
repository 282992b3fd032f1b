"""One object per resource type: a private endpoint, tagged resources on it, and what the tests check.

The control-plane scenarios (tests in this directory) are written once and run for each type; what
differs per type lives in a ``SourceKind`` (this module), implemented in ``database_kinds``
(PostgreSQL, MySQL, SQLite) and ``service_kinds`` (Redis, S3, DynamoDB). Data, schemas and servers
come from the connector tests (tests/integration/connectors), imported rather than copied:
``_SCHEMA``/``_create`` for the SQL databases, ``_fill`` for SQLite, ``RedisServer``/``fill`` for
Redis, ``_put`` for S3 and ``_create_table`` for DynamoDB.

Every kind isolates itself so that runs never collide: the SQL endpoints list only databases with
the kind's own random prefix, Redis runs on a private server, SQLite on a private directory, and
buckets and tables get random names. ``close`` drops everything the kind made or was told about
(``track``), including scratch copies a failed test might have left.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KIND_KEYS = ("postgresql", "mysql", "sqlite", "redis", "s3", "dynamodb")
# How often a dump killer looks for the dump's session on the server.
POLL_SECONDS = 0.002


@dataclass(frozen=True)
class Broken:
    """Endpoint settings that cannot work, and a fragment the job's StatusMessage must contain."""

    connection: dict[str, Any]
    credentials: dict[str, str]
    reason: str


class SourceKind:
    """An endpoint of one resource type, private to one test, and the resources made on it."""

    key: str
    endpoint_type: str

    def __init__(self) -> None:
        self.tracked: list[str] = []

    # --- what a subclass provides -----------------------------------------------------------------

    def connection(self) -> dict[str, Any]:
        """The endpoint's connection settings."""
        raise NotImplementedError

    def credentials(self) -> dict[str, str]:
        """The endpoint's credentials (secrets)."""
        return {}

    def make(self, tags: Mapping[str, str]) -> str:
        """Create a resource with some data and these native tags; return its connector name."""
        raise NotImplementedError

    def exists(self, resource: str) -> bool:
        """True while the resource (a restored copy too) exists (a Redis database: holds keys)."""
        raise NotImplementedError

    def tamper(self, resource: str) -> None:
        """Change one value of a restored copy, keeping its size: the validation must notice."""
        raise NotImplementedError

    def broken(self) -> dict[str, Broken]:
        """Settings that cannot work (refused credentials, unreachable server), by problem."""
        raise NotImplementedError

    def drop(self, resource: str) -> None:
        """Remove a resource if it exists."""
        raise NotImplementedError

    # --- killing a dump (PostgreSQL, MySQL, Redis) --------------------------------------------------

    # A fragment of the tool's error that the failed job's StatusMessage must show.
    killed_reason = ""

    def make_big(self) -> str:
        """A resource whose dump takes a moment; return its connector name."""
        raise NotImplementedError(f"{self.key} has no dump to kill")

    def dump_connection(self) -> dict[str, Any]:
        """The connection settings of the endpoint whose dump is killed."""
        return self.connection()

    def kill_dump(self, resource: str, finished: threading.Event) -> str:
        """Wait until the dump of ``resource`` streams, kill it on the server; say what was killed.

        Raises AssertionError if ``finished`` is set (the job ended) before the dump was seen.
        """
        raise NotImplementedError(f"{self.key} has no dump to kill")

    # --- shared -----------------------------------------------------------------------------------

    def track(self, resource: str) -> str:
        """Remember a resource to drop in ``close`` (scratch copies: in case a test fails midway)."""
        self.tracked.append(resource)
        return resource

    def close(self) -> None:
        """Drop everything made or tracked."""
        for resource in reversed(self.tracked):
            self.drop(resource)
        self.tracked.clear()


def unique_name(prefix: str = "bvc") -> str:
    """A random name: the prefix and 10 hex digits (valid for a database, bucket, table or file)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"
