"""Recording state changes as append-only catalog events (notification sinks and audits read them)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Event


class EventType(StrEnum):
    """Event types; where AWS Backup names one (BackupVaultEvent), the name is AWS's."""

    STORAGE_LOCATION_CREATED = "STORAGE_LOCATION_CREATED"
    STORAGE_LOCATION_DELETED = "STORAGE_LOCATION_DELETED"
    BACKUP_VAULT_CREATED = "BACKUP_VAULT_CREATED"
    BACKUP_VAULT_DELETED = "BACKUP_VAULT_DELETED"
    BACKUP_VAULT_LOCK_CHANGED = "BACKUP_VAULT_LOCK_CHANGED"
    BACKUP_VAULT_LOCK_DELETED = "BACKUP_VAULT_LOCK_DELETED"
    BACKUP_VAULT_ACCESS_POLICY_CHANGED = "BACKUP_VAULT_ACCESS_POLICY_CHANGED"
    BACKUP_VAULT_NOTIFICATIONS_CHANGED = "BACKUP_VAULT_NOTIFICATIONS_CHANGED"
    BACKUP_PLAN_CREATED = "BACKUP_PLAN_CREATED"
    BACKUP_PLAN_MODIFIED = "BACKUP_PLAN_MODIFIED"
    BACKUP_PLAN_DELETED = "BACKUP_PLAN_DELETED"
    BACKUP_SELECTION_CREATED = "BACKUP_SELECTION_CREATED"
    BACKUP_SELECTION_DELETED = "BACKUP_SELECTION_DELETED"
    # jobs and recovery points (AWS BackupVaultEvent names where AWS has one)
    BACKUP_JOB_STARTED = "BACKUP_JOB_STARTED"
    BACKUP_JOB_COMPLETED = "BACKUP_JOB_COMPLETED"
    BACKUP_JOB_SUCCESSFUL = "BACKUP_JOB_SUCCESSFUL"
    BACKUP_JOB_FAILED = "BACKUP_JOB_FAILED"
    BACKUP_JOB_EXPIRED = "BACKUP_JOB_EXPIRED"
    BACKUP_JOB_ABORTED = "BACKUP_JOB_ABORTED"
    BACKUP_JOB_RETRYING = "BACKUP_JOB_RETRYING"
    RESTORE_JOB_STARTED = "RESTORE_JOB_STARTED"
    RESTORE_JOB_COMPLETED = "RESTORE_JOB_COMPLETED"
    RESTORE_JOB_SUCCESSFUL = "RESTORE_JOB_SUCCESSFUL"
    RESTORE_JOB_FAILED = "RESTORE_JOB_FAILED"
    COPY_JOB_STARTED = "COPY_JOB_STARTED"
    COPY_JOB_SUCCESSFUL = "COPY_JOB_SUCCESSFUL"
    COPY_JOB_FAILED = "COPY_JOB_FAILED"
    RECOVERY_POINT_MODIFIED = "RECOVERY_POINT_MODIFIED"
    RECOVERY_POINT_MOVED_TO_COLD = "RECOVERY_POINT_MOVED_TO_COLD"
    RECOVERY_POINT_DELETED = "RECOVERY_POINT_DELETED"
    RECOVERY_POINT_DELETION_REFUSED = "RECOVERY_POINT_DELETION_REFUSED"
    LEGAL_HOLD_CREATED = "LEGAL_HOLD_CREATED"
    LEGAL_HOLD_CANCELED = "LEGAL_HOLD_CANCELED"
    # sources and the scheduler
    SOURCE_ENDPOINT_REGISTERED = "SOURCE_ENDPOINT_REGISTERED"
    SOURCE_ENDPOINT_DELETED = "SOURCE_ENDPOINT_DELETED"
    RESOURCE_DISCOVERED = "RESOURCE_DISCOVERED"
    RESOURCE_VANISHED = "RESOURCE_VANISHED"
    SCHEDULER_LEADER_CHANGED = "SCHEDULER_LEADER_CHANGED"


def record_event(
    session: Session,
    event_type: EventType | str,
    occurred_at: datetime,
    *,
    resource_arn: str | None = None,
    vault_name: str | None = None,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Event:
    """Append an event in the caller's transaction, so it exists exactly when the change does."""
    event = Event(
        occurred_at=occurred_at,
        event_type=str(event_type),
        resource_arn=resource_arn,
        vault_name=vault_name,
        job_id=job_id,
        detail=dict(detail or {}),
    )
    session.add(event)
    return event
