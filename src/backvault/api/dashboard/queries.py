"""Read-only aggregates of the catalog for the dashboard's overview (no service function returns these).

Counting through the list services would page through every row; these are single grouped queries
over indexed columns. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from backvault.control.catalog.activity import Job, RecoveryPoint
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext

# States of a finished job that did not produce what was asked.
FAILED_STATES = ("FAILED", "EXPIRED", "ABORTED")


@dataclass(frozen=True)
class VaultTotals:
    """What one vault holds: its recovery points and their total backup size."""

    vault_name: str
    recovery_points: int
    backup_bytes: int


def resource_counts(context: ServiceContext) -> tuple[int, int]:
    """Return (protected, unprotected): known resources with and without a backup."""
    with context.catalog.transaction() as session:
        rows = session.execute(
            select(ProtectedResource.last_backup_time.is_(None), func.count()).group_by(
                ProtectedResource.last_backup_time.is_(None)
            )
        )
        counts = {bool(unprotected): count for unprotected, count in rows}
    return counts.get(False, 0), counts.get(True, 0)


def job_counts_since(
    context: ServiceContext, since: datetime, job_types: Collection[str]
) -> dict[str, dict[str, int]]:
    """Return job type -> state -> number of jobs of those types created since ``since``."""
    if not job_types:
        return {}
    with context.catalog.transaction() as session:
        rows = session.execute(
            select(Job.job_type, Job.state, func.count())
            .where(Job.creation_date >= since, Job.job_type.in_(sorted(job_types)))
            .group_by(Job.job_type, Job.state)
        )
        counts: dict[str, dict[str, int]] = {}
        for job_type, state, count in rows:
            counts.setdefault(job_type, {})[state] = count
    return counts


def backup_jobs_per_day(
    context: ServiceContext, now: datetime, days: int
) -> list[tuple[date, dict[str, int]]]:
    """Return the last ``days`` UTC days, oldest first, each with its backup jobs counted by state."""
    today = now.date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
    buckets: dict[date, dict[str, int]] = {first + timedelta(days=offset): {} for offset in range(days)}
    with context.catalog.transaction() as session:
        # Bucketed here rather than in SQL: date arithmetic differs between SQLite and PostgreSQL.
        rows = session.execute(
            select(Job.creation_date, Job.state).where(Job.job_type == "BACKUP", Job.creation_date >= start)
        )
        for created, state in rows:
            day = created.date()
            if day in buckets:
                buckets[day][state] = buckets[day].get(state, 0) + 1
    return sorted(buckets.items())


def vault_totals(context: ServiceContext, vault_names: Collection[str]) -> list[VaultTotals]:
    """Return the recovery points and their summed BackupSizeInBytes of the given vaults, by name."""
    if not vault_names:
        return []
    names = sorted(vault_names)
    with context.catalog.transaction() as session:
        points = {
            name: (count, int(size or 0))
            for name, count, size in session.execute(
                select(RecoveryPoint.vault_name, func.count(), func.sum(RecoveryPoint.backup_size_in_bytes))
                .where(RecoveryPoint.vault_name.in_(names))
                .group_by(RecoveryPoint.vault_name)
            )
        }
    return [VaultTotals(name, *points.get(name, (0, 0))) for name in names]


def latest_failures(
    context: ServiceContext, job_types: Sequence[str], limit: int = 10
) -> list[dict[str, Any]]:
    """Return the latest failed, expired or aborted jobs of the given types, newest first."""
    if not job_types:
        return []
    when = func.coalesce(Job.completion_date, Job.creation_date)
    with context.catalog.transaction() as session:
        rows = session.scalars(
            select(Job)
            .where(Job.state.in_(FAILED_STATES), Job.job_type.in_(sorted(job_types)))
            .order_by(when.desc(), Job.id)
            .limit(limit)
        )
        return [
            {
                "JobType": row.job_type,
                "JobId": row.id,
                "State": row.state,
                "ResourceArn": row.resource_arn,
                "BackupVaultName": row.vault_name,
                "CreationDate": row.creation_date,
                "CompletionDate": row.completion_date,
                "StatusMessage": row.status_message,
            }
            for row in rows
        ]
