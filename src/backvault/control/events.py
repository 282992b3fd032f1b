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
