"""Builders for the recovery point, legal hold, copy and lifecycle tests: real backups into vaults."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from backvault.control.catalog import RecoveryPoint
from backvault.control.context import ServiceContext
from backvault.control.point_storage import load_snapshot
from backvault.control.recovery_points import open_recovery_point_repository
from backvault.control.vaults import get_vault_row, open_vault_repository
from backvault.domain.arn import recovery_point_arn
from backvault.domain.lifecycle import Lifecycle, calculate_lifecycle
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot

RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/projects"
ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"


def make_data(root: Path, *, size: int = 1 << 20, seed: bytes = b"") -> Path:
    """Create a small directory tree with random and compressible files; return its path."""
    (root / "nested").mkdir(parents=True, exist_ok=True)
    (root / "random.bin").write_bytes(os.urandom(size))
    (root / "text.txt").write_bytes(b"line of text " * 20_000 + seed)
    (root / "nested" / "small").write_bytes(b"small file " + seed)
    return root


def read_files(root: Path) -> dict[str, bytes]:
    """Every regular file below root by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def back_up_point(
    context: ServiceContext,
    vault_name: str,
    source: Path,
    *,
    created: datetime | None = None,
    lifecycle: dict[str, Any] | None = None,
    resource_arn: str = RESOURCE,
    plan_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Back up ``source`` into the vault's repository and record its point as a backup job would."""
    repository = open_vault_repository(context, vault_name)
    try:
        snapshot = backup_paths(repository, [str(source)], use_cache=False)
    finally:
        repository.store.close()
    created = created or context.now()
    parsed = None if lifecycle is None else Lifecycle.from_aws(lifecycle)
    calculated = calculate_lifecycle(created, parsed)
    point_id = str(uuid.uuid4())
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, vault_name)
        arn = recovery_point_arn(context.arn_context(vault.location_name), point_id)
        session.add(
            RecoveryPoint(
                id=point_id,
                arn=arn,
                vault_name=vault_name,
                resource_arn=resource_arn,
                resource_type="Filesystem",
                status="COMPLETED",
                creation_date=created,
                completion_date=created,
                plan_id=plan_id,
                plan_version_id="version-1" if plan_id else None,
                rule_id="rule-1" if plan_id else None,
                lifecycle=None if parsed is None else parsed.to_aws(),
                move_to_cold_storage_at=calculated.move_to_cold_storage_at,
                delete_at=calculated.delete_at,
                storage_class="WARM",
                snapshot_id=snapshot.id,
                backup_size_in_bytes=int(snapshot.summary.get("bytes_read", 0)) or 1,
                tags=dict(tags or {}),
            )
        )
    return arn


def restore_point(context: ServiceContext, arn: str, target: Path) -> Path:
    """Restore a point from whichever repository holds it now; return the restored source directory."""
    repository, point = open_recovery_point_repository(context, arn)
    try:
        snapshot = load_snapshot(repository, point.snapshot_id or "")
        result = restore_snapshot(repository, snapshot, str(target))
        assert not result.errors, result.errors
        return target / Path(snapshot.paths[0]).name
    finally:
        repository.store.close()


def snapshot_ids(context: ServiceContext, vault_name: str) -> set[str]:
    """Ids of the snapshots in a vault's warm repository."""
    repository = open_vault_repository(context, vault_name)
    try:
        return {snapshot.id for snapshot in repository.list_snapshots()}
    finally:
        repository.store.close()


def point_row(context: ServiceContext, arn: str) -> RecoveryPoint | None:
    """The point's row, detached, or None once it is gone."""
    from sqlalchemy import select

    with context.catalog.transaction() as session:
        point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == arn)).first()
        if point is not None:
            session.expunge(point)
        return point
