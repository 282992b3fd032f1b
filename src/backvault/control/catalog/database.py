"""Opening the catalog database: SQLite (WAL) by default, PostgreSQL through a URL; sessions, transactions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backvault.control.catalog.migrate import upgrade_catalog
from backvault.domain.errors import ServiceUnavailableException

DATABASE_URL_VARIABLE = "BACKVAULT_DATABASE_URL"
CATALOG_FILE_NAME = "catalog.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class CatalogUnavailableError(Exception):
    """The catalog database cannot be reached or migrated when opening it."""


class Catalog:
    """An open catalog: the engine and a session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Objects stay readable after commit: services build their answers from them, and reloading
        # every attribute after each commit would cost a query per object.
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """The database kind: "sqlite" or "postgresql"."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session inside one transaction: committed on success, rolled back on any error."""
        try:
            with self.sessions.begin() as session:
                yield session
        except OperationalError as error:
            # Lost connections, lock timeouts, serialization failures: the client may retry.
            raise ServiceUnavailableException(
                f"The catalog database is unavailable or busy; try again. ({error.orig})"
            ) from error

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def resolve_database_url(url: str | None, data_dir: Path) -> URL:
    """Return the URL to use: ``url``, else $BACKVAULT_DATABASE_URL, else SQLite in the data directory."""
    text = url or os.environ.get(DATABASE_URL_VARIABLE) or ""
    if not text:
        return URL.create("sqlite", database=str(Path(data_dir) / CATALOG_FILE_NAME))
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise ValueError(
            f"Invalid catalog database URL {_redacted(text)!r}: expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE."
        ) from None
    # psycopg 3 is the driver we ship; plain postgresql:// would make SQLAlchemy look for psycopg2.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(
            f"Unsupported catalog database {parsed.drivername!r}: use SQLite (sqlite:///PATH) or "
            "PostgreSQL (postgresql+psycopg://...)."
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("The catalog needs a SQLite file: every connection would see its own in-memory one.")
    return parsed


def open_catalog(url: str | None, data_dir: Path, *, upgrade: bool = True) -> Catalog:
    """Open (and by default migrate) the catalog; see resolve_database_url for which database."""
    resolved = resolve_database_url(url, data_dir)
    if resolved.get_backend_name() == "sqlite":
        engine = _sqlite_engine(resolved)
    else:
        engine = create_engine(resolved, pool_pre_ping=True)
    try:
        if upgrade:
            upgrade_catalog(engine)
    except OperationalError as error:
        engine.dispose()
        shown = resolved.render_as_string(hide_password=True)
        raise CatalogUnavailableError(f"Cannot open the catalog database {shown}: {error.orig}") from error
    except BaseException:
        engine.dispose()
        raise
    return Catalog(engine)


def _sqlite_engine(url: URL) -> Engine:
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions out of the sqlite3 module's hands so SQLAlchemy's begin event decides
        # (the module would otherwise commit before DDL and defer BEGIN in its own way).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
            cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores REFERENCES unless asked
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front. A deferred transaction that reads and then writes
        # fails at once with "database is locked" when another writer committed in between (the busy
        # timeout does not apply to that upgrade); services read-then-write, so they wait instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _redacted(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
