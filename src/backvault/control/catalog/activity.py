"""Catalog tables of what the service does: recovery points, jobs, legal holds, leases and events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, event, inspect, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from backvault.control.catalog.base import Base, JsonDocument
from backvault.control.catalog.models import ID, NAME, STATE, VAULT_NAME, BackupVault


class JobType(StrEnum):
    """The kinds of job the single ``jobs`` table holds."""

    BACKUP = "BACKUP"
    COPY = "COPY"
    RESTORE = "RESTORE"


class RecoveryPoint(Base):
    """A recovery point: one snapshot in a vault's repository plus its lifecycle (AWS ``RecoveryPoint``)."""

    __tablename__ = "recovery_points"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    vault_name: Mapped[str] = mapped_column(String(VAULT_NAME), ForeignKey("backup_vaults.name"), index=True)
    # No foreign key: recovery points outlive the resources they protect, as in AWS.
    resource_arn: Mapped[str] = mapped_column(Text, index=True)
    resource_type: Mapped[str] = mapped_column(String(STATE))
    status: Mapped[str] = mapped_column(String(STATE))
    status_message: Mapped[str | None] = mapped_column(Text)
    creation_date: Mapped[datetime]
    completion_date: Mapped[datetime | None]
    backup_job_id: Mapped[str | None] = mapped_column(String(ID))
    plan_id: Mapped[str | None] = mapped_column(String(ID))
    plan_version_id: Mapped[str | None] = mapped_column(String(ID))
    rule_id: Mapped[str | None] = mapped_column(String(ID))
    source_backup_vault_arn: Mapped[str | None] = mapped_column(Text)
    lifecycle: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    # CalculatedLifecycle as columns, so the lifecycle engine finds due points through an index.
    move_to_cold_storage_at: Mapped[datetime | None] = mapped_column(index=True)
    delete_at: Mapped[datetime | None] = mapped_column(index=True)
    storage_class: Mapped[str] = mapped_column(String(STATE))
    snapshot_id: Mapped[str | None] = mapped_column(String(ID))
    backup_size_in_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_restore_time: Mapped[datetime | None]
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)


class Job(Base):
    """A backup, copy or restore job: a durable state machine claimed by workers under a lease."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(STATE), index=True)
    state: Mapped[str] = mapped_column(String(STATE))
    status_message: Mapped[str | None] = mapped_column(Text)
    resource_arn: Mapped[str | None] = mapped_column(Text, index=True)
    resource_type: Mapped[str | None] = mapped_column(String(STATE))
    # Vault references are plain names: job history stays after a vault is deleted, as in AWS.
    vault_name: Mapped[str | None] = mapped_column(String(VAULT_NAME), index=True)
    destination_vault_arn: Mapped[str | None] = mapped_column(Text)
    recovery_point_arn: Mapped[str | None] = mapped_column(Text)
    plan_id: Mapped[str | None] = mapped_column(String(ID))
    plan_version_id: Mapped[str | None] = mapped_column(String(ID))
    rule_id: Mapped[str | None] = mapped_column(String(ID))
    parent_job_id: Mapped[str | None] = mapped_column(String(ID), index=True)
    idempotency_token: Mapped[str | None] = mapped_column(Text, index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    creation_date: Mapped[datetime]
    start_by: Mapped[datetime | None]
    complete_by: Mapped[datetime | None]
    started_date: Mapped[datetime | None]
    completion_date: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    error_message: Mapped[str | None] = mapped_column(Text)
    bytes_transferred: Mapped[int] = mapped_column(BigInteger, default=0)
    backup_size_in_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument, default=list)
    # None: the worker's retry policy decides (migration 0002).
    max_attempts: Mapped[int | None] = mapped_column(Integer)


# Never two backups of one resource at once, even when two workers claim in the same instant
# (a partial unique index: SQLite and PostgreSQL both have them; migration 0002).
Index(
    "ux_jobs_active_backup_resource",
    Job.resource_arn,
    unique=True,
    sqlite_where=(Job.job_type == "BACKUP") & Job.state.in_(("RUNNING", "ABORTING")),
    postgresql_where=(Job.job_type == "BACKUP") & Job.state.in_(("RUNNING", "ABORTING")),
)


class LegalHold(Base):
    """A legal hold and its recovery-point selection (AWS ``LegalHold``)."""

    __tablename__ = "legal_holds"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(STATE), index=True)
    selection: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    creation_date: Mapped[datetime]
    cancellation_date: Mapped[datetime | None]
    cancel_description: Mapped[str | None] = mapped_column(Text)
    retain_record_until: Mapped[datetime | None]
    idempotency_token: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)


class Lease(Base):
    """A named lease (scheduler leadership): who holds it and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime]


class Event(Base):
    """One state change, appended and never changed; notification sinks and audits read these."""

    __tablename__ = "events"

    # SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    event_type: Mapped[str] = mapped_column(String(NAME), index=True)
    resource_arn: Mapped[str | None] = mapped_column(Text)
    vault_name: Mapped[str | None] = mapped_column(String(VAULT_NAME), index=True)
    job_id: Mapped[str | None] = mapped_column(String(ID), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)


# --- invariants kept at flush time ---------------------------------------------------------------
# Mapper events fire for ORM unit-of-work changes only: recovery points are added and removed with
# session.add()/session.delete(), never with bulk insert()/delete() statements, or the vault's count
# drifts. The count is written with an UPDATE, so a BackupVault already loaded in the same session
# shows the old number until it is refreshed.


def _adjust_count(connection: Connection, vault_name: str, delta: int) -> None:
    connection.execute(
        update(BackupVault)
        .where(BackupVault.name == vault_name)
        .values(number_of_recovery_points=BackupVault.number_of_recovery_points + delta)
    )


@event.listens_for(RecoveryPoint, "after_insert")
def _count_new_point(_mapper: Mapper[Any], connection: Connection, target: RecoveryPoint) -> None:
    _adjust_count(connection, target.vault_name, 1)


@event.listens_for(RecoveryPoint, "after_delete")
def _count_removed_point(_mapper: Mapper[Any], connection: Connection, target: RecoveryPoint) -> None:
    _adjust_count(connection, target.vault_name, -1)


@event.listens_for(RecoveryPoint, "before_update")
def _refuse_vault_move(_mapper: Mapper[Any], _connection: Connection, target: RecoveryPoint) -> None:
    # A point's data is in its vault's repository; moving it is a copy job, never a column update.
    if inspect(target).attrs.vault_name.history.has_changes():
        raise ValueError("a recovery point cannot change vaults; copy it instead")


@event.listens_for(Event, "before_update")
def _refuse_event_update(_mapper: Mapper[Any], _connection: Connection, target: Event) -> None:
    raise ValueError(f"events are append-only; event {target.id} cannot be changed")


@event.listens_for(Event, "before_delete")
def _refuse_event_delete(_mapper: Mapper[Any], _connection: Connection, target: Event) -> None:
    raise ValueError(f"events are append-only; event {target.id} cannot be deleted")
