"""Run the catalog's Alembic migrations from code: no alembic.ini, the script location is this package.

To write a new migration from a development checkout::

    from alembic import command
    from backvault.control.catalog.migrate import alembic_config
    with engine.connect() as connection:  # an engine on an up-to-date catalog
        command.revision(alembic_config(connection), message="...", autogenerate=True, rev_id="0002")

then review the generated file: autogenerate misses renames and server-side details.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIRECTORY = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number: it names the PostgreSQL advisory lock that serialises migrations when
# several servers and workers start at once against one database.
_MIGRATION_LOCK_KEY = 0x6276_6361_7461_6C67


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic config pointing at the packaged migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def upgrade_catalog(engine: Engine, revision: str = "heads") -> None:
    """Bring the catalog's schema up to ``revision`` in one transaction (a no-op when already there)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
        command.upgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """Return the revision the catalog's schema is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """Return the newest revision the installed code knows (migrations form one line of history)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one head revision in {MIGRATIONS_DIRECTORY}, found {heads or 'none'}")
    return heads[0]
