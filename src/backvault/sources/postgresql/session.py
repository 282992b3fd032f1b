"""PostgreSQL connections for the connector: settings from the endpoint, clear errors, table digests.

Connection settings (``EndpointSpec.connection``)::

    {"host": "127.0.0.1", "port": 5432, "user": "postgres",   # where and as whom (these defaults)
     "maintenance_database": "postgres",   # where discovery connects
     "databases": ["*"],                   # fnmatch patterns of databases to list (default all)
     "exclude_databases": ["postgres"],    # patterns left out (default: the maintenance database)
     "sslmode": "prefer", "connect_timeout": 10,
     "include_globals": false}             # also save roles and tablespaces (pg_dumpall -g)

The password comes only from ``EndpointSpec.credentials["password"]``; tools get it as PGPASSWORD.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from backvault.sources.base import ConnectorError, EndpointSpec
from backvault.sources.dump_process import child_environment, redact
from backvault.sources.settings import patterns_setting, port_setting, seconds_setting

DEFAULT_PORT = 5432
# Session settings that fix how a row prints as text, so a checksum taken at backup time and one taken
# on a restored copy (maybe through another server's defaults) hash the very same text.
_STABLE_TEXT_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}
# Databases that are never resources and never dropped.
SYSTEM_DATABASES = frozenset({"template0", "template1"})

# A table's row count and an order-independent checksum: the sum of the first 64 bits of each row's
# md5 (as numeric, so it cannot overflow); ONLY, so inheritance children are not counted twice.
_DIGEST_QUERY = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0)::text "
    "FROM ONLY {table} AS t"
)
# Ordinary tables (and partitions) outside the system schemas: what pg_dump saves the data of.
_TABLES_QUERY = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 1, 2
"""


class Settings:
    """An endpoint's PostgreSQL connection settings, checked."""

    def __init__(self, endpoint: EndpointSpec) -> None:
        connection = endpoint.connection
        self.endpoint_name = endpoint.name
        self.host = str(connection.get("host") or "127.0.0.1")
        self.port = port_setting(endpoint, connection.get("port", DEFAULT_PORT))
        self.user = str(connection.get("user") or "postgres")
        self.maintenance_database = str(connection.get("maintenance_database") or "postgres")
        self.include = patterns_setting(endpoint, "databases", connection.get("databases", ["*"]))
        self.exclude = patterns_setting(
            endpoint, "exclude_databases", connection.get("exclude_databases", [self.maintenance_database])
        )
        self.sslmode = str(connection.get("sslmode") or "prefer")
        self.connect_timeout = seconds_setting(
            endpoint, "connect_timeout", connection.get("connect_timeout", 10)
        )
        self.include_globals = bool(connection.get("include_globals", False))
        self.password = endpoint.credentials.get("password", "")

    @property
    def where(self) -> str:
        """host:port as user, for messages."""
        return f"PostgreSQL at {self.host}:{self.port} as {self.user}"

    def wanted(self, database: str) -> bool:
        """True when the endpoint's filters include this database."""
        return (
            database not in SYSTEM_DATABASES
            and any(fnmatch.fnmatchcase(database, pattern) for pattern in self.include)
            and not any(fnmatch.fnmatchcase(database, pattern) for pattern in self.exclude)
        )

    def tool_environment(self) -> dict[str, str]:
        """Environment for pg_dump / pg_restore: where to connect, and the password (never argv)."""
        extra = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": "backvault",
        }
        if self.password:
            extra["PGPASSWORD"] = self.password
        return child_environment(extra)

    def error(self, action: str, error: BaseException) -> ConnectorError:
        """A ConnectorError for a failed action, with the server's reason and no secret in it."""
        reason = redact(str(error).strip() or type(error).__name__, [self.password])
        reason = " ".join(reason.split())
        return ConnectorError(
            f"{action} on {self.where} failed: {reason}; "
            "check the endpoint's connection settings and credentials"
        )


def database_conninfo(database: str) -> str:
    """A conninfo naming only the database (tools take the rest from the environment)."""
    return make_conninfo(dbname=database)


@contextmanager
def connect(settings: Settings, database: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection with stable text settings; ConnectorError naming what went wrong."""
    try:
        connection = psycopg.connect(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password or None,
            dbname=database or settings.maintenance_database,
            sslmode=settings.sslmode,
            connect_timeout=settings.connect_timeout,
            application_name="backvault",
            autocommit=True,
        )
    except psycopg.Error as error:
        raise settings.error(
            f"connecting to database {database or settings.maintenance_database!r}", error
        ) from None
    try:
        for name, value in _STABLE_TEXT_SETTINGS.items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        yield connection
    finally:
        connection.close()


def list_tables(connection: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every table whose data a dump holds."""
    return [(str(schema), str(table)) for schema, table in connection.execute(_TABLES_QUERY).fetchall()]


def table_digests(
    connection: psycopg.Connection[Any], on_table: Callable[[], None] = lambda: None
) -> dict[str, dict[str, Any]]:
    """Row count and checksum of every table, in the connection's current transaction."""
    digests: dict[str, dict[str, Any]] = {}
    for schema, table in list_tables(connection):
        query = sql.SQL(_DIGEST_QUERY).format(table=sql.Identifier(schema, table))
        row = connection.execute(query).fetchone()
        assert row is not None
        digests[f"{schema}.{table}"] = {"rows": int(row[0]), "checksum": str(row[1])}
        on_table()
    return digests


def database_exists(connection: psycopg.Connection[Any], database: str) -> bool:
    """True when a database of that name exists on the server."""
    return (
        connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
    )


def user_relation_count(connection: psycopg.Connection[Any]) -> int:
    """How many tables, views, sequences... live outside the system schemas (0 = an empty database)."""
    row = connection.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
    ).fetchone()
    return int(row[0]) if row else 0
