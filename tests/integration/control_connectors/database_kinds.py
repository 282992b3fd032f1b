"""Source kinds of the SQL databases: PostgreSQL and MariaDB on their standard ports, SQLite files."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import test_mysql
import test_postgresql
import test_sqlite
from contract import closed_port
from psycopg import sql
from source_kinds import POLL_SECONDS, Broken, SourceKind, unique_name

# Rows of the "big" databases: enough that the dump streams for a good fraction of a second.
BIG_ROWS = 150_000


# --- PostgreSQL -------------------------------------------------------------------------------------


class PostgresqlKind(SourceKind):
    """Databases on 127.0.0.1:5432; tags in a JSON ``COMMENT ON DATABASE``."""

    key = "postgresql"
    endpoint_type = "PostgreSQL"

    def __init__(self) -> None:
        super().__init__()
        self.prefix = unique_name()

    def connection(self) -> dict[str, Any]:
        return {
            "host": test_postgresql.HOST,
            "port": test_postgresql.PORT,
            "user": test_postgresql.USER,
            "databases": [f"{self.prefix}*"],
        }

    def credentials(self) -> dict[str, str]:
        return {"password": test_postgresql.PASSWORD}

    def _create(self, tags: Mapping[str, str]) -> str:
        name = self.track(unique_name(self.prefix + "_"))
        with test_postgresql._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if tags:
                comment = json.dumps({"backvault": {"tags": dict(tags)}})
                connection.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment))
                )
        return name

    def make(self, tags: Mapping[str, str]) -> str:
        name = self._create(tags)
        with test_postgresql._admin(name) as connection:
            connection.execute(test_postgresql._SCHEMA)
        return name

    def make_big(self) -> str:
        """A database whose dump is about 16 MB (pg_dump streams it for a while)."""
        name = self._create({})
        with test_postgresql._admin(name) as connection:
            connection.execute(
                "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || "
                f"md5((g * 13)::text) AS payload FROM generate_series(1, {BIG_ROWS}) AS g"
            )
        return name

    def exists(self, resource: str) -> bool:
        with test_postgresql._admin() as connection:
            row = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (resource,)).fetchone()
        return row is not None

    def tamper(self, resource: str) -> None:
        with test_postgresql._admin(resource) as connection:
            connection.execute("UPDATE orders SET note = 'tampered' WHERE id = 42")

    def broken(self) -> dict[str, Broken]:
        # This server trusts 127.0.0.1, so an unknown role is how it refuses credentials.
        unknown_role = {**self.connection(), "user": "no_such_role_bvc"}
        unreachable = {**self.connection(), "port": closed_port()}
        password = {"password": "s3cret-pg-bvc"}
        return {
            "credentials refused": Broken(unknown_role, password, 'role "no_such_role_bvc"'),
            "server unreachable": Broken(unreachable, password, "Connection refused"),
        }

    def drop(self, resource: str) -> None:
        test_postgresql._drop(resource)

    killed_reason = "terminating connection due to administrator command"

    def kill_dump(self, resource: str, finished: threading.Event) -> str:
        # pg_dump's COPY of a table is the dump streaming data: end that backend as an administrator would.
        with test_postgresql._admin() as connection:
            while not finished.is_set():
                row = connection.execute(
                    "SELECT pid, query FROM pg_stat_activity "
                    "WHERE datname = %s AND state = 'active' AND query LIKE 'COPY %%'",
                    (resource,),
                ).fetchone()
                if row is not None:
                    connection.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    return f"backend {row[0]} running {row[1]!r}"
                time.sleep(POLL_SECONDS)
        raise AssertionError("the job ended before pg_dump was seen copying table data")


# --- MySQL / MariaDB --------------------------------------------------------------------------------


class MysqlKind(SourceKind):
    """Databases on the MariaDB at 127.0.0.1:3306; tags in a JSON database comment."""

    key = "mysql"
    endpoint_type = "MySQL"

    def __init__(self) -> None:
        super().__init__()
        self.prefix = unique_name()

    def connection(self) -> dict[str, Any]:
        return {
            "host": test_mysql.HOST,
            "port": test_mysql.PORT,
            "user": test_mysql.USER,
            "databases": [f"{self.prefix}*"],
        }

    def credentials(self) -> dict[str, str]:
        return {"password": ""}

    def make(self, tags: Mapping[str, str]) -> str:
        name = self.track(unique_name(self.prefix + "_"))
        test_mysql._create(name, json.dumps({"backvault": {"tags": dict(tags)}}) if tags else None)
        return name

    def make_big(self) -> str:
        """A database whose dump is about 16 MB (mariadb-dump streams it for a while)."""
        name = self.track(unique_name(self.prefix + "_"))
        test_mysql._run(f"CREATE DATABASE `{name}`")
        test_mysql._run("CREATE TABLE filler (id INT PRIMARY KEY, payload VARCHAR(100))", name)
        test_mysql._run(
            "INSERT INTO filler SELECT seq, CONCAT(MD5(seq), MD5(seq * 7), MD5(seq * 13)) "
            f"FROM seq_1_to_{BIG_ROWS}",
            name,
        )
        return name

    def exists(self, resource: str) -> bool:
        rows = test_mysql._run(
            f"SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {_mysql_literal(resource)}"
        )
        return bool(rows)

    def tamper(self, resource: str) -> None:
        test_mysql._run("UPDATE orders SET note = 'tampered' WHERE id = 42", resource)

    def broken(self) -> dict[str, Broken]:
        unreachable = {**self.connection(), "port": closed_port()}
        return {
            "credentials refused": Broken(self.connection(), {"password": "wrong-pw-bvc1"}, "Access denied"),
            "server unreachable": Broken(unreachable, self.credentials(), "Can't connect"),
        }

    def drop(self, resource: str) -> None:
        test_mysql._drop(resource)

    killed_reason = "Lost connection"

    def kill_dump(self, resource: str, finished: threading.Event) -> str:
        # The dump tool's SELECT of a table's rows is it streaming data: KILL that session.
        connection = test_mysql._admin()
        try:
            with connection.cursor() as cursor:
                while not finished.is_set():
                    cursor.execute(
                        "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE %s",
                        (resource, "SELECT /*!40001 SQL_NO_CACHE */%"),
                    )
                    row = cursor.fetchone()
                    if row is not None:
                        cursor.execute(f"KILL {int(row[0])}")
                        return f"session {row[0]} running {row[1]!r}"
                    time.sleep(POLL_SECONDS)
        finally:
            connection.close()
        raise AssertionError("the job ended before the dump tool was seen reading table rows")


def _mysql_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# --- SQLite -----------------------------------------------------------------------------------------


class SqliteKind(SourceKind):
    """Database files below a private root; tags in a ``backvault_tags`` table."""

    key = "sqlite"
    endpoint_type = "SQLite"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def connection(self) -> dict[str, Any]:
        return {"root": str(self.root)}

    def make(self, tags: Mapping[str, str]) -> str:
        name = f"{unique_name()}.db"
        test_sqlite._fill(self.root / name, 500, tags)
        return name

    def exists(self, resource: str) -> bool:
        return (self.root / resource).exists()

    def tamper(self, resource: str) -> None:
        connection = sqlite3.connect(self.root / resource)
        try:
            with connection:
                connection.execute("UPDATE items SET name = 'tampered' WHERE id = 5")
        finally:
            connection.close()

    def broken(self) -> dict[str, Broken]:
        # No credentials to refuse: a root that went away (an unmounted volume) is what can break.
        gone = {"root": str(self.root.with_name(self.root.name + "-unmounted"))}
        return {"root unreachable": Broken(gone, {}, "is not an existing directory")}

    def drop(self, resource: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.root / resource}{suffix}").unlink(missing_ok=True)
