"""MySQL/MariaDB connections for the connector: settings, a private option file for tools, table digests.

Connection settings (``EndpointSpec.connection``)::

    {"host": "127.0.0.1", "port": 3306, "user": "root",   # where and as whom (these defaults)
     "databases": ["*"], "exclude_databases": [],         # fnmatch filters (system schemas never)
     "connect_timeout": 10,
     "lock_wait_timeout": 60,         # seconds to wait for the brief global read lock (see connector)
     "consistent_manifest": true}     # false: no global read lock; the manifest may differ under writes

The password comes only from ``EndpointSpec.credentials["password"]``. Tools get it through an option
file (``--defaults-extra-file``) that only this process can read and that is deleted right after.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pymysql.cursors

from backvault.sources.base import ConnectorError, EndpointSpec
from backvault.sources.dump_process import redact
from backvault.sources.settings import patterns_setting, port_setting, seconds_setting

DEFAULT_PORT = 3306
SYSTEM_DATABASES = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
# Each row printed with QUOTE() per column (NULL stays the bare word NULL, so it differs from 'NULL'),
# hashed with MD5; the table checksum is the sum of the first 64 bits of the row hashes (order-free).
_ROW_SUM = (
    "COALESCE(SUM(CAST(CONV(SUBSTRING(MD5(CONCAT_WS(',', {columns})), 1, 16), 16, 10) AS DECIMAL(20))), 0)"
)


class Settings:
    """An endpoint's MySQL/MariaDB connection settings, checked."""

    def __init__(self, endpoint: EndpointSpec) -> None:
        connection = endpoint.connection
        self.endpoint_name = endpoint.name
        self.host = str(connection.get("host") or "127.0.0.1")
        self.port = port_setting(endpoint, connection.get("port", DEFAULT_PORT))
        self.user = str(connection.get("user") or "root")
        self.include = patterns_setting(endpoint, "databases", connection.get("databases", ["*"]))
        self.exclude = patterns_setting(
            endpoint, "exclude_databases", connection.get("exclude_databases", [])
        )
        self.connect_timeout = seconds_setting(
            endpoint, "connect_timeout", connection.get("connect_timeout", 10)
        )
        self.lock_wait_timeout = seconds_setting(
            endpoint, "lock_wait_timeout", connection.get("lock_wait_timeout", 60)
        )
        self.consistent_manifest = bool(connection.get("consistent_manifest", True))
        self.password = endpoint.credentials.get("password", "")

    @property
    def where(self) -> str:
        """host:port as user, for messages."""
        return f"MySQL at {self.host}:{self.port} as {self.user}"

    def wanted(self, database: str) -> bool:
        """True when the endpoint's filters include this database."""
        return (
            database.lower() not in SYSTEM_DATABASES
            and any(fnmatch.fnmatchcase(database, pattern) for pattern in self.include)
            and not any(fnmatch.fnmatchcase(database, pattern) for pattern in self.exclude)
        )

    def error(self, action: str, error: BaseException) -> ConnectorError:
        """A ConnectorError for a failed action, with the server's reason and no secret in it."""
        arguments: tuple[Any, ...] = tuple(getattr(error, "args", ()))
        reason = str(arguments[1]) if len(arguments) > 1 else str(error) or type(error).__name__
        reason = " ".join(redact(reason, [self.password]).split())
        return ConnectorError(
            f"{action} on {self.where} failed: {reason}; "
            "check the endpoint's connection settings and credentials"
        )

    @contextmanager
    def option_file(self) -> Iterator[str]:
        """A 0600 client option file with host, port, user and password; deleted on exit."""
        with tempfile.TemporaryDirectory(prefix="backvault-mysql-") as directory:
            path = os.path.join(directory, "client.cnf")
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            lines = ["[client]", f"host={self.host}", f"port={self.port}", f"user={_option_value(self.user)}"]
            lines.append("protocol=TCP")  # 'localhost' would otherwise mean the local socket
            if self.password:
                lines.append(f"password={_option_value(self.password)}")
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")
            yield path


@contextmanager
def connect(settings: Settings, database: str | None = None) -> Iterator[pymysql.connections.Connection[Any]]:
    """An autocommit utf8mb4 connection; ConnectorError naming what went wrong."""
    try:
        connection = pymysql.connect(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            database=database,
            connect_timeout=settings.connect_timeout,
            charset="utf8mb4",
            autocommit=True,
            cursorclass=pymysql.cursors.Cursor,
        )
    except pymysql.Error as error:
        target = f" to database {database!r}" if database else ""
        raise settings.error(f"connecting{target}", error) from None
    try:
        yield connection
    finally:
        connection.close()


def query(
    connection: pymysql.connections.Connection[Any], statement: str, *arguments: Any
) -> list[tuple[Any, ...]]:
    """Run one statement and return all its rows."""
    with connection.cursor() as cursor:
        cursor.execute(statement, arguments or None)
        return list(cursor.fetchall())


def quote_name(name: str) -> str:
    """A backquoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def table_digests(
    connection: pymysql.connections.Connection[Any],
    database: str,
    on_table: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Row count and checksum of every base table, in the connection's current transaction."""
    columns: dict[str, list[str]] = {}
    for table, column in query(
        connection,
        "SELECT c.TABLE_NAME, c.COLUMN_NAME FROM information_schema.COLUMNS c "
        "JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
        "WHERE c.TABLE_SCHEMA = %s AND t.TABLE_TYPE = 'BASE TABLE' ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
        database,
    ):
        columns.setdefault(str(table), []).append(str(column))
    digests: dict[str, dict[str, Any]] = {}
    for table in sorted(columns):
        quoted = ", ".join(f"QUOTE({quote_name(column)})" for column in columns[table])
        statement = (
            f"SELECT COUNT(*), CAST({_ROW_SUM.format(columns=quoted)} AS CHAR) "
            f"FROM {quote_name(database)}.{quote_name(table)}"
        )
        count, checksum = query(connection, statement)[0]
        digests[table] = {"rows": int(count), "checksum": _text(checksum)}
        on_table()
    return digests


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _option_value(value: str) -> str:
    # quoted, with the escapes the client library's option-file reader understands
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'
