"""The lifecycle engine: moves due recovery points to cold storage and expires points past DeleteAt.

``run_lifecycle`` is called by the scheduler's leader on every tick. Each run:

1. expires points whose ``delete_at`` has passed: never one that a legal hold protects or that the
   vault lock still protects (MinRetentionDays); those are skipped and reported, and retried on
   every run until they may go. Expiring deletes the row and queues the snapshot for removal in one
   transaction (event RECOVERY_POINT_DELETED, reason EXPIRED);
2. moves points whose ``move_to_cold_storage_at`` has passed into the vault's cold repository
   (control/point_storage.py): copy the snapshot (repo/transfer.py, only missing chunks), then in one
   transaction switch the row to COLD with the cold snapshot's id and queue the warm snapshot for
   removal (event RECOVERY_POINT_MOVED_TO_COLD). Vaults whose location has no cold tier keep their
   points warm;
3. works through the removal queue: forget the snapshots, prune the repositories they were in.

Crash safety: a cold copy is tagged with its point's id, so a run that died between copying and
recording finds the copy next time instead of making another; everything after the recording
transaction is queued work that the next run finishes.

Prune's grace period defaults to the repository's (one hour of real time): unused packs are marked
on the run that forgets their last snapshot and deleted by a later run once the grace has passed
and no lock older than the mark exists, so a backup running at the same time is never harmed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select

from backvault.control.catalog.activity import RecoveryPoint
from backvault.control.catalog.models import BackupVault, StorageLocation
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.legal_holds import (
    hold_selection,
    holds_covering,
    point_ref,
    points_by_arn,
    protecting_holds,
)
from backvault.control.point_storage import (
    Tier,
    load_snapshot,
    open_tier_repository,
    process_removals,
    queue_removal,
)
from backvault.control.recovery_points import remove_point
from backvault.control.vaults import vault_lock
from backvault.domain.errors import BackupServiceError
from backvault.domain.lifecycle import StorageClass
from backvault.domain.vault import VaultLock, check_can_delete_point
from backvault.repo.errors import RepositoryError
from backvault.repo.prune import DEFAULT_GRACE_SECONDS
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.transfer import copy_snapshot
from backvault.storage.base import StorageError

logger = logging.getLogger(__name__)

# Points handled per run and kind: a backlog is worked off over several ticks, keeping ticks short.
DEFAULT_BATCH = 200
POINT_TAG_PREFIX = "backvault:recovery-point="


@dataclass
class LifecycleReport:
    """What one lifecycle run did (recovery point ARNs)."""

    moved_to_cold: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    held_by_legal_hold: list[str] = field(default_factory=list)
    held_by_vault_lock: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # ARN or "vault/TIER" -> error
    snapshots_forgotten: int = 0
    repositories_pruned: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    bytes_freed: int = 0


def run_lifecycle(
    context: ServiceContext,
    *,
    prune_grace_seconds: float = DEFAULT_GRACE_SECONDS,
    batch: int = DEFAULT_BATCH,
) -> LifecycleReport:
    """Expire due points, move due points to cold storage, then forget and prune what was queued."""
    report = LifecycleReport()
    expire_due_points(context, report, batch=batch)
    move_due_points_to_cold(context, report, batch=batch)
    removals = process_removals(context, grace_seconds=prune_grace_seconds)
    report.snapshots_forgotten = removals.snapshots_forgotten
    report.repositories_pruned = removals.repositories_pruned
    report.packs_deleted = removals.packs_deleted
    report.bytes_freed = removals.bytes_freed
    report.failed.update(removals.errors)
    return report


# --- expiry --------------------------------------------------------------------------------------


def expire_due_points(
    context: ServiceContext, report: LifecycleReport, *, batch: int = DEFAULT_BATCH
) -> None:
    """Delete the points whose retention has ended, unless a legal hold or the vault lock keeps them."""
    now = context.now()
    with context.catalog.transaction() as session:
        holds = [hold_selection(hold) for hold in protecting_holds(session)]
        statement = select(RecoveryPoint).where(
            RecoveryPoint.delete_at.is_not(None), RecoveryPoint.delete_at <= now
        )
        locks: dict[str, VaultLock | None] = {}
        # Held points stay due on every run: pass them by, or they would fill every batch.
        due: list[tuple[str, str]] = []
        for point in points_by_arn(session, statement):
            reference = point_ref(point)
            if any(selection.matches(reference) for selection in holds):
                report.held_by_legal_hold.append(point.arn)
                continue
            if point.vault_name not in locks:
                vault = session.get(BackupVault, point.vault_name)
                locks[point.vault_name] = None if vault is None else vault_lock(vault)
            if not _lock_allows(locks[point.vault_name], point, now):
                report.held_by_vault_lock.append(point.arn)
                continue
            due.append((point.id, point.arn))
            if len(due) >= batch:
                break
    for point_id, arn in due:
        try:
            _expire_one(context, point_id, report)
        except (BackupServiceError, RepositoryError, StorageError) as error:
            report.failed[arn] = str(error)


def _expire_one(context: ServiceContext, point_id: str, report: LifecycleReport) -> None:
    now = context.now()
    with context.catalog.transaction() as session:
        point = session.scalars(
            select(RecoveryPoint).where(RecoveryPoint.id == point_id).with_for_update(skip_locked=True)
        ).first()
        if point is None or point.delete_at is None or point.delete_at > now:
            return  # deleted, changed or busy meanwhile
        if holds_covering(session, point):  # a hold created since the batch was chosen
            report.held_by_legal_hold.append(point.arn)
            return
        vault = session.get(BackupVault, point.vault_name)
        if not _lock_allows(None if vault is None else vault_lock(vault), point, now):
            report.held_by_vault_lock.append(point.arn)  # a lock set since the batch was chosen
            return
        remove_point(session, context, point, reason="EXPIRED")
        report.expired.append(point.arn)


def _lock_allows(lock: VaultLock | None, point: RecoveryPoint, now: datetime) -> bool:
    """True unless the vault lock's MinRetentionDays still protects the point."""
    try:
        check_can_delete_point(lock, point.creation_date, now)
    except BackupServiceError:
        return False
    return True


# --- cold storage --------------------------------------------------------------------------------


def move_due_points_to_cold(
    context: ServiceContext, report: LifecycleReport, *, batch: int = DEFAULT_BATCH
) -> None:
    """Copy due WARM points into their vault's cold repository and switch them to COLD."""
    now = context.now()
    with context.catalog.transaction() as session:
        statement = (
            select(RecoveryPoint.id, RecoveryPoint.vault_name)
            .join(BackupVault, BackupVault.name == RecoveryPoint.vault_name)
            .join(StorageLocation, StorageLocation.name == BackupVault.location_name)
            .where(
                RecoveryPoint.storage_class == StorageClass.WARM.value,
                RecoveryPoint.move_to_cold_storage_at.is_not(None),
                RecoveryPoint.move_to_cold_storage_at <= now,
                RecoveryPoint.snapshot_id.is_not(None),
                or_(RecoveryPoint.delete_at.is_(None), RecoveryPoint.delete_at > now),
                or_(
                    StorageLocation.cold_location_name.is_not(None),
                    StorageLocation.cold_storage_class.is_not(None),
                ),
            )
            .order_by(RecoveryPoint.vault_name, RecoveryPoint.move_to_cold_storage_at, RecoveryPoint.id)
            .limit(batch)
        )
        due: dict[str, list[str]] = {}
        for point_id, vault_name in session.execute(statement):
            due.setdefault(vault_name, []).append(point_id)
    for vault_name, point_ids in due.items():
        try:
            _move_vault_points(context, vault_name, point_ids, report)
        except (BackupServiceError, RepositoryError, StorageError, OSError) as error:
            logger.warning("cold storage moves in vault %s failed: %s", vault_name, error)
            report.failed[f"{vault_name}/{Tier.COLD.value}"] = str(error)


def _move_vault_points(
    context: ServiceContext, vault_name: str, point_ids: list[str], report: LifecycleReport
) -> None:
    warm = open_tier_repository(context, vault_name, Tier.WARM)
    try:
        cold = open_tier_repository(context, vault_name, Tier.COLD, create=True)
        try:
            # One listing per run finds the copies an interrupted run already made.
            earlier = _tagged_copies(cold)
            for point_id in point_ids:
                try:
                    _move_one(context, point_id, warm, cold, earlier, report)
                except (BackupServiceError, RepositoryError, StorageError) as error:
                    logger.warning("moving recovery point %s to cold storage failed: %s", point_id, error)
                    report.failed[point_id] = str(error)
        finally:
            cold.store.close()
    finally:
        warm.store.close()


def _tagged_copies(repository: Repository) -> dict[str, list[Snapshot]]:
    found: dict[str, list[Snapshot]] = {}
    for snapshot in repository.list_snapshots():
        for tag in snapshot.tags:
            if tag.startswith(POINT_TAG_PREFIX):
                found.setdefault(tag.removeprefix(POINT_TAG_PREFIX), []).append(snapshot)
    return found


def _move_one(
    context: ServiceContext,
    point_id: str,
    warm: Repository,
    cold: Repository,
    earlier: dict[str, list[Snapshot]],
    report: LifecycleReport,
) -> None:
    with context.catalog.transaction() as session:
        point = session.get(RecoveryPoint, point_id)
        if point is None or point.storage_class != StorageClass.WARM or not point.snapshot_id:
            return
        warm_snapshot_id, arn, vault_name = point.snapshot_id, point.arn, point.vault_name
    copies = earlier.get(point_id, [])
    if copies:
        copied = copies[0]
    else:
        source = load_snapshot(warm, warm_snapshot_id)
        copied = copy_snapshot(warm, source, cold, tags=[*source.tags, POINT_TAG_PREFIX + point_id])
        earlier[point_id] = [copied]
    now = context.now()
    with context.catalog.transaction() as session:
        point = session.scalars(
            select(RecoveryPoint).where(RecoveryPoint.id == point_id).with_for_update()
        ).first()
        if point is None or point.storage_class != StorageClass.WARM or point.snapshot_id != warm_snapshot_id:
            # deleted or changed while we copied: the copy is not needed
            queue_removal(
                session,
                context,
                vault_name=vault_name,
                tier=Tier.COLD,
                snapshot_id=copied.id,
                recovery_point_arn=arn,
                reason="COPY_UNUSED",
            )
            return
        point.storage_class = StorageClass.COLD.value
        point.snapshot_id = copied.id
        queue_removal(
            session,
            context,
            vault_name=vault_name,
            tier=Tier.WARM,
            snapshot_id=warm_snapshot_id,
            recovery_point_arn=arn,
            reason="MOVED_TO_COLD",
        )
        # Copies from interrupted runs beyond the one kept are not referenced by anything.
        for extra in copies[1:]:
            queue_removal(
                session,
                context,
                vault_name=vault_name,
                tier=Tier.COLD,
                snapshot_id=extra.id,
                recovery_point_arn=arn,
                reason="COPY_UNUSED",
            )
        record_event(
            session,
            EventType.RECOVERY_POINT_MOVED_TO_COLD,
            now,
            resource_arn=arn,
            vault_name=vault_name,
            detail={"MoveToColdStorageAt": _iso(point.move_to_cold_storage_at)},
        )
    report.moved_to_cold.append(arn)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
