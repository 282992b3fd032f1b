"""The catalog itself: migrations match the models, database settings, UTC timestamps, invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import setuptools
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from control_helpers import add_recovery_point
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text

from backvault.control.catalog import (
    BackupVault,
    Catalog,
    CatalogUnavailableError,
    Event,
    Lease,
    RecoveryPoint,
    current_revision,
    head_revision,
    open_catalog,
    resolve_database_url,
    upgrade_catalog,
)
from backvault.control.catalog.schema import metadata
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.vaults import create_backup_vault, describe_backup_vault
from backvault.domain.errors import ServiceUnavailableException

SRC = Path(__file__).resolve().parents[3] / "src"


def _schema_diff(catalog: Catalog, target: MetaData) -> list[object]:
    with catalog.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, target))


def test_migrations_produce_exactly_the_models_schema(catalog: Catalog) -> None:
    assert _schema_diff(catalog, metadata) == []


def test_schema_comparison_does_notice_a_difference(catalog: Catalog) -> None:
    # Guards the test above against passing vacuously (for example with an empty metadata).
    changed = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    Table("not_migrated", changed, Column("id", Integer, primary_key=True), Column("name", String(10)))
    diff = _schema_diff(catalog, changed)
    assert [entry[0] for entry in diff if isinstance(entry, tuple)] == ["add_table"]


def test_upgrade_is_at_head_and_idempotent(catalog: Catalog) -> None:
    head = head_revision()
    assert current_revision(catalog.engine) == head
    upgrade_catalog(catalog.engine)
    upgrade_catalog(catalog.engine)
    assert current_revision(catalog.engine) == head


def test_migrations_ship_as_packages() -> None:
    # setuptools' packages.find only ships packages: the migrations must be ones, with __init__.py.
    packages = setuptools.find_packages(str(SRC))
    assert "backvault.control.catalog.migrations" in packages
    assert "backvault.control.catalog.migrations.versions" in packages


def test_sqlite_default_location_and_settings(data_dir: Path) -> None:
    catalog = open_catalog(None, data_dir)
    try:
        assert (data_dir / "catalog.db").is_file()
        with catalog.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        catalog.dispose()


def test_foreign_keys_are_enforced(catalog: Catalog, context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    with pytest.raises(Exception, match=r"(?i)foreign key"), catalog.transaction() as session:
        session.execute(text("UPDATE backup_vaults SET location_name = 'nowhere'"))


def test_resolve_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_database_url(None, tmp_path).database == str(tmp_path / "catalog.db")
    monkeypatch.setenv("BACKVAULT_DATABASE_URL", "postgresql://u@db.example:5432/bv")
    environment = resolve_database_url(None, tmp_path)
    assert (environment.drivername, environment.host) == ("postgresql+psycopg", "db.example")
    assert resolve_database_url("sqlite:////x/y.db", tmp_path).database == "/x/y.db"
    with pytest.raises(ValueError, match="in-memory"):
        resolve_database_url("sqlite://", tmp_path)
    with pytest.raises(ValueError, match="Unsupported catalog database 'mysql"):
        resolve_database_url("mysql://u:secret@h/db", tmp_path)


def test_timestamps_come_back_as_the_same_instant_in_utc(catalog: Catalog) -> None:
    berlin = timezone(timedelta(hours=2))
    moment = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=berlin)
    with catalog.transaction() as session:
        session.add(Lease(name="scheduler", owner="a", expires_at=moment, acquired_at=moment))
    with catalog.transaction() as session:
        lease = session.scalars(select(Lease)).one()  # a new session: loaded from the database
        assert lease.expires_at == moment
        assert lease.expires_at.tzinfo == UTC
        assert lease.expires_at.hour == 12
        # Comparisons in SQL see the same instant whatever offset the parameter carries.
        found = session.scalars(
            select(Lease).where(Lease.expires_at > moment.astimezone(UTC) - timedelta(seconds=1))
        )
        assert [row.name for row in found] == ["scheduler"]


def test_naive_timestamps_are_refused(catalog: Catalog) -> None:
    with pytest.raises(Exception, match="timezone-aware"), catalog.transaction() as session:
        session.add(
            Lease(name="x", owner="a", expires_at=datetime(2025, 1, 1), acquired_at=datetime(2025, 1, 1))
        )


def test_events_are_append_only(catalog: Catalog) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    with catalog.transaction() as session:
        record_event(session, EventType.BACKUP_VAULT_CREATED, now, vault_name="main", detail={"a": 1})
    with pytest.raises(ValueError, match="append-only"), catalog.transaction() as session:
        session.scalars(select(Event)).one().event_type = "CHANGED"
    with pytest.raises(ValueError, match="append-only"), catalog.transaction() as session:
        session.delete(session.scalars(select(Event)).one())
    with catalog.transaction() as session:
        event = session.scalars(select(Event)).one()
        assert (event.event_type, event.detail, event.occurred_at) == ("BACKUP_VAULT_CREATED", {"a": 1}, now)


def test_recovery_point_count_follows_inserts_and_deletes(catalog: Catalog, context: ServiceContext) -> None:
    vault = create_backup_vault(context, "main")
    first = add_recovery_point(catalog, "main", vault["BackupVaultArn"], context.now())
    add_recovery_point(catalog, "main", vault["BackupVaultArn"], context.now())
    assert describe_backup_vault(context, "main")["NumberOfRecoveryPoints"] == 2
    with catalog.transaction() as session:
        session.delete(session.get(RecoveryPoint, first))
    assert describe_backup_vault(context, "main")["NumberOfRecoveryPoints"] == 1
    with catalog.transaction() as session:
        assert session.get(BackupVault, "main") is not None


def test_a_failing_transaction_leaves_nothing(catalog: Catalog) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(RuntimeError), catalog.transaction() as session:
        session.add(Lease(name="x", owner="a", expires_at=now, acquired_at=now))
        session.flush()
        raise RuntimeError("boom")
    with catalog.transaction() as session:
        assert session.scalars(select(Lease)).all() == []


def test_unreachable_database_is_service_unavailable(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/none"
    with pytest.raises(CatalogUnavailableError, match="Cannot open the catalog database") as raised:
        open_catalog(url, tmp_path)
    assert "hunter2" not in str(raised.value)
    catalog = open_catalog(url, tmp_path, upgrade=False)
    try:
        with (
            pytest.raises(ServiceUnavailableException, match="unavailable"),
            catalog.transaction() as session,
        ):
            session.execute(text("SELECT 1"))
    finally:
        catalog.dispose()
