"""Where a recovery point's data lives (a vault's warm or cold repository) and how it leaves again.

**Cold tier.** A vault's warm repository is ``<location>/<vault>``. Its cold repository is
``<root>/cold.tier/<vault>``, where ``<root>`` is the cold location when the vault's location names
one, or the vault's own S3 location when the cold tier is an S3 storage class (no vault name
contains a '.', so the path never collides with a vault's own repository). It is created on first
use with the vault's passphrase, so it is opened exactly like the warm one. With a storage class,
the cold repository's pack objects (``data/``: all the bulk) are written with that class while its
small objects (config, keys, index, snapshots, locks) stay STANDARD, so the repository can always
be opened, listed and checked. Points are copied into the cold repository rather than rewritten in
place, because a warm pack is shared by many points (deduplication) and cannot change class for one
of them. Classes that need an S3 restore before reading (GLACIER, DEEP_ARCHIVE) make the packs
unreadable until such a restore is done outside backvault.

**Removals.** Forgetting a snapshot goes through the ``snapshot_removals`` queue (catalog/removals.py),
recorded in the same transaction as the change to the point: PENDING (forget the snapshot object) ->
FORGOTTEN (prune the repository) -> PRUNED (prune marked the unused packs; the row goes once no
deletion mark is left, i.e. the sweep ran). Every step is idempotent, so a crash only delays it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.models import BackupVault, StorageLocation
from backvault.control.catalog.removals import RemovalState, SnapshotRemoval
from backvault.control.context import ServiceContext
from backvault.control.locations import S3, open_location_store, vault_repository_url
from backvault.control.vaults import get_vault_row, vault_passphrase
from backvault.domain.errors import DependencyFailureException, InvalidRequestException
from backvault.repo.errors import RepositoryError, RepositoryExistsError, RepositoryNotFoundError
from backvault.repo.prune import DEFAULT_GRACE_SECONDS, PruneReport, prune
from backvault.repo.repository import Repository, verify_named_object
from backvault.repo.snapshot import Snapshot
from backvault.storage.base import ObjectInfo, ObjectStore, StorageError
from backvault.storage.url import ENDPOINT_VARIABLE

logger = logging.getLogger(__name__)

COLD_DIRECTORY = "cold.tier"
_SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class Tier(StrEnum):
    """The two repositories of a vault."""

    WARM = "WARM"
    COLD = "COLD"


# --- stores and repositories ---------------------------------------------------------------------


class ColdClassStore:
    """An S3 store whose pack objects are written with a cold storage class, the rest as STANDARD."""

    def __init__(self, standard: ObjectStore, cold: ObjectStore) -> None:
        self._standard = standard
        self._cold = cold

    def __repr__(self) -> str:
        return f"ColdClassStore({self._standard!r})"

    def _for_write(self, key: str) -> ObjectStore:
        return self._cold if key.startswith("data/") else self._standard

    @property
    def location(self) -> str:
        """The s3:// URL of the store."""
        return self._standard.location

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key (packs in the cold class)."""
        self._for_write(key).put(key, data)

    def put_new(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key if it is new (packs in the cold class)."""
        self._for_write(key).put_new(key, data)

    def get(self, key: str) -> bytes:
        """Return an object."""
        return self._standard.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return part of an object."""
        return self._standard.get_range(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        """Return an object's size and time."""
        return self._standard.stat(key)

    def exists(self, key: str) -> bool:
        """Tell whether an object exists."""
        return self._standard.exists(key)

    def delete(self, key: str) -> None:
        """Remove an object."""
        self._standard.delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """List objects under prefix."""
        return self._standard.list(prefix)

    def close(self) -> None:
        """Close both clients."""
        self._standard.close()
        self._cold.close()


def has_cold_tier(session: Session, vault: BackupVault) -> bool:
    """True when the vault's location has a cold tier (another location or an S3 storage class)."""
    location = _location(session, vault.location_name, vault.name)
    return bool(location.cold_location_name or location.cold_storage_class)


def tier_store(session: Session, vault: BackupVault, tier: Tier) -> ObjectStore:
    """Open the object store of the vault's warm or cold repository (no I/O yet)."""
    location = _location(session, vault.location_name, vault.name)
    if tier == Tier.WARM:
        return open_location_store(location, vault.repository_url)
    if location.cold_location_name:
        cold = _location(session, location.cold_location_name, vault.name)
        return open_location_store(cold, cold_repository_url(cold, vault.name))
    if location.cold_storage_class and location.location_type == S3:
        url = cold_repository_url(location, vault.name)
        standard = open_location_store(location, url)
        from backvault.storage.s3 import S3Store  # boto3 loads only for S3 locations

        prefix = url.removeprefix(f"s3://{location.bucket}").strip("/")
        endpoint = location.endpoint_url or os.environ.get(ENDPOINT_VARIABLE) or None
        packs = S3Store(
            location.bucket or "",
            prefix,
            endpoint_url=endpoint,
            region=location.s3_region,
            storage_class=location.cold_storage_class,
        )
        return ColdClassStore(standard, packs)
    raise InvalidRequestException(
        f"Backup vault {vault.name!r} has no cold storage: its location {location.name!r} has neither a cold "
        "location nor a cold storage class."
    )


def cold_repository_url(root: StorageLocation, vault_name: str) -> str:
    """Return the URL of a vault's cold repository under ``root`` (see the module docstring)."""
    return vault_repository_url(root, f"{COLD_DIRECTORY}/{vault_name}")


def open_tier_repository(
    context: ServiceContext, vault_name: str, tier: Tier, *, create: bool = False, load_index: bool = True
) -> Repository:
    """Open a vault's warm or cold repository; ``create`` makes the cold one on first use."""
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, vault_name)
        store = tier_store(session, vault, tier)
        passphrase = vault_passphrase(context, vault)
    try:
        try:
            return Repository.open(store, passphrase, load_index=load_index)
        except RepositoryNotFoundError:
            if not create or tier != Tier.COLD or next(iter(store.list("")), None) is not None:
                raise
        try:
            return Repository.init(store, passphrase)
        except RepositoryExistsError:  # another process created it meanwhile
            return Repository.open(store, passphrase, load_index=load_index)
    except (RepositoryError, StorageError, OSError) as error:
        store.close()
        raise DependencyFailureException(
            f"Backup vault {vault_name!r}: the {tier.lower()} repository cannot be opened: {error}"
        ) from None


def load_snapshot(repository: Repository, snapshot_id: str) -> Snapshot:
    """Read one snapshot object by its full id (no listing of the others)."""
    if not _SNAPSHOT_ID_RE.match(snapshot_id):
        raise RepositoryError(f"{snapshot_id!r} is not a snapshot id")
    key = f"snapshots/{snapshot_id}"
    data = repository.store.get(key)
    verify_named_object(key, data)
    return Snapshot.decode(snapshot_id, data, repository.sealer)


def _location(session: Session, name: str, vault_name: str) -> StorageLocation:
    location = session.get(StorageLocation, name)
    if location is None:  # foreign keys forbid it; say so plainly if the catalog was edited by hand
        raise DependencyFailureException(
            f"Backup vault {vault_name!r} names a missing storage location {name!r}."
        )
    return location


# --- the removal queue ---------------------------------------------------------------------------


def queue_removal(
    session: Session,
    context: ServiceContext,
    *,
    vault_name: str,
    tier: Tier,
    snapshot_id: str,
    recovery_point_arn: str | None,
    reason: str,
) -> SnapshotRemoval:
    """Record, in the caller's transaction, that a snapshot must leave a vault's repository."""
    now = context.now()
    removal = SnapshotRemoval(
        id=uuid.uuid4().hex,
        vault_name=vault_name,
        tier=tier.value,
        snapshot_id=snapshot_id,
        recovery_point_arn=recovery_point_arn,
        reason=reason,
        state=RemovalState.PENDING.value,
        created_at=now,
        updated_at=now,
        attempts=0,
    )
    session.add(removal)
    return removal


@dataclass
class RemovalReport:
    """What processing the removal queue did."""

    snapshots_forgotten: int = 0
    repositories_pruned: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    bytes_freed: int = 0
    finished: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # "vault/TIER" -> message


def forget_removal(context: ServiceContext, removal_id: str) -> bool:
    """Forget one queued snapshot now (best effort: the lifecycle engine retries); True when done."""
    with context.catalog.transaction() as session:
        removal = session.get(SnapshotRemoval, removal_id)
        if removal is None or removal.state != RemovalState.PENDING:
            return removal is not None
        vault = session.get(BackupVault, removal.vault_name)
        store = None if vault is None else tier_store(session, vault, Tier(removal.tier))
    try:
        if store is not None:
            _forget(store, removal.snapshot_id)
    except (StorageError, OSError) as error:
        _record_failure(context, [removal_id], str(error))
        return False
    finally:
        if store is not None:
            store.close()
    _advance(context, [removal_id], RemovalState.PENDING, RemovalState.FORGOTTEN)
    return True


def process_removals(
    context: ServiceContext, *, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> RemovalReport:
    """Work through the queue: forget snapshots, prune their repositories, finish swept removals."""
    report = RemovalReport()
    with context.catalog.transaction() as session:
        groups = sorted({(row.vault_name, row.tier) for row in session.scalars(select(SnapshotRemoval))})
    for vault_name, tier in groups:
        try:
            _process_group(context, vault_name, Tier(tier), grace_seconds, report)
        except Exception as error:  # one broken repository must not stop the others
            logger.warning("removals in %s/%s failed: %s", vault_name, tier, error)
            report.errors[f"{vault_name}/{tier}"] = str(error)
    return report


def _process_group(
    context: ServiceContext, vault_name: str, tier: Tier, grace_seconds: float, report: RemovalReport
) -> None:
    with context.catalog.transaction() as session:
        rows = list(
            session.scalars(
                select(SnapshotRemoval).where(
                    SnapshotRemoval.vault_name == vault_name, SnapshotRemoval.tier == tier.value
                )
            )
        )
        vault = session.get(BackupVault, vault_name)
        if vault is None:  # the vault and its repositories are gone, and the snapshots with them
            for row in rows:
                session.delete(row)
            report.finished += len(rows)
            return
        store = tier_store(session, vault, tier)
    try:
        pending = [row for row in rows if row.state == RemovalState.PENDING]
        for row in pending:
            _forget(store, row.snapshot_id)
        report.snapshots_forgotten += len(pending)
        _advance(context, [row.id for row in pending], RemovalState.PENDING, RemovalState.FORGOTTEN)
        to_prune = [row.id for row in rows if row.state in (RemovalState.PENDING, RemovalState.FORGOTTEN)]
        waiting = [row.id for row in rows if row.state == RemovalState.PRUNED]
        if to_prune or (waiting and _sweep_due(store, grace_seconds)):
            pruned = _prune(context, vault_name, tier, grace_seconds)
            report.repositories_pruned.append(f"{vault_name}/{tier.value}")
            report.packs_deleted += pruned.packs_deleted
            report.bytes_freed += pruned.bytes_freed
            _advance(context, to_prune, RemovalState.FORGOTTEN, RemovalState.PRUNED)
            waiting += to_prune
        if waiting and next(iter(store.list("deletions/")), None) is None:
            report.finished += _finish(context, waiting)
    except (StorageError, OSError, RepositoryError, DependencyFailureException) as error:
        _record_failure(context, [row.id for row in rows], str(error))
        raise
    finally:
        store.close()


def _forget(store: ObjectStore, snapshot_id: str) -> None:
    if not _SNAPSHOT_ID_RE.match(snapshot_id):
        raise RepositoryError(f"{snapshot_id!r} is not a snapshot id")
    store.delete(f"snapshots/{snapshot_id}")  # deleting a missing object is fine: idempotent


def _sweep_due(store: ObjectStore, grace_seconds: float) -> bool:
    # Prune's grace is measured in real time on the marks it wrote (repo/prune.py), so compare the
    # objects' own timestamps with the real clock, not the service clock.
    cutoff = time.time() - grace_seconds
    return any(info.modified <= cutoff for info in store.list("deletions/"))


def _prune(context: ServiceContext, vault_name: str, tier: Tier, grace_seconds: float) -> PruneReport:
    repository = open_tier_repository(context, vault_name, tier, load_index=False)
    try:
        return prune(repository, grace_seconds=grace_seconds)
    finally:
        repository.store.close()


def _advance(context: ServiceContext, ids: list[str], before: RemovalState, after: RemovalState) -> None:
    if not ids:
        return
    with context.catalog.transaction() as session:
        for row in session.scalars(select(SnapshotRemoval).where(SnapshotRemoval.id.in_(ids))):
            if row.state == before:
                row.state = after.value
                row.updated_at = context.now()
                row.last_error = None


def _finish(context: ServiceContext, ids: list[str]) -> int:
    with context.catalog.transaction() as session:
        rows = list(session.scalars(select(SnapshotRemoval).where(SnapshotRemoval.id.in_(ids))))
        for row in rows:
            session.delete(row)
        return len(rows)


def _record_failure(context: ServiceContext, ids: list[str], message: str) -> None:
    with context.catalog.transaction() as session:
        for row in session.scalars(select(SnapshotRemoval).where(SnapshotRemoval.id.in_(ids))):
            row.attempts += 1
            row.last_error = message[:2000]
            row.updated_at = context.now()


def pending_removals(context: ServiceContext) -> list[dict[str, str | int | datetime | None]]:
    """The queue as plain dicts (operators and tests look at it)."""
    with context.catalog.transaction() as session:
        return [
            {
                "VaultName": row.vault_name,
                "Tier": row.tier,
                "SnapshotId": row.snapshot_id,
                "RecoveryPointArn": row.recovery_point_arn,
                "Reason": row.reason,
                "State": row.state,
                "Attempts": row.attempts,
                "LastError": row.last_error,
                "CreatedAt": row.created_at,
            }
            for row in session.scalars(select(SnapshotRemoval).order_by(SnapshotRemoval.created_at))
        ]
