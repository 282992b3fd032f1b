"""The lifecycle engine: cold moves, expiry with prune, legal holds and vault locks, crash recovery."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from control_helpers import FakeClock
from point_helpers import back_up_point, make_data, point_row, read_files, restore_point, snapshot_ids
from sqlalchemy import select

from backvault.control.catalog import Event
from backvault.control.context import ServiceContext
from backvault.control.lifecycle_engine import POINT_TAG_PREFIX, run_lifecycle
from backvault.control.locations import create_storage_location
from backvault.control.point_storage import Tier, load_snapshot, open_tier_repository, pending_removals
from backvault.control.recovery_points import describe_recovery_point
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.vaults import create_backup_vault, open_vault_repository
from backvault.repo.check import check
from backvault.repo.transfer import copy_snapshot

COLD_AND_DELETE = {"MoveToColdStorageAfterDays": 5, "DeleteAfterDays": 100}


@pytest.fixture
def tiered(context: ServiceContext, tmp_path: Path) -> str:
    """A vault in a location whose cold tier is another local location; returns the vault name."""
    create_storage_location(context, "coldstore", "local", path=str(tmp_path / "cold"))
    create_storage_location(
        context, "warmstore", "local", path=str(tmp_path / "warm"), cold_location_name="coldstore"
    )
    create_backup_vault(context, "tiered", location_name="warmstore")
    return "tiered"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_data(tmp_path / "projects", size=600 * 1024)


def event_types(context: ServiceContext, resource_arn: str) -> list[str]:
    with context.catalog.transaction() as session:
        return list(
            session.scalars(
                select(Event.event_type).where(Event.resource_arn == resource_arn).order_by(Event.id)
            )
        )


def cold_snapshots(context: ServiceContext, vault: str) -> list[str]:
    repository = open_tier_repository(context, vault, Tier.COLD)
    try:
        return [snapshot.id for snapshot in repository.list_snapshots()]
    finally:
        repository.store.close()


def test_points_move_to_cold_and_restore_from_the_cold_tier(
    context: ServiceContext, clock: FakeClock, tiered: str, source: Path, tmp_path: Path
) -> None:
    arn = back_up_point(context, tiered, source, lifecycle=COLD_AND_DELETE)
    warm_snapshot = point_row(context, arn).snapshot_id  # type: ignore[union-attr]
    clock.advance(timedelta(days=4))
    assert run_lifecycle(context, prune_grace_seconds=0).moved_to_cold == []

    clock.advance(timedelta(days=1))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.moved_to_cold == [arn] and not report.failed
    point = point_row(context, arn)
    assert point is not None and point.storage_class == "COLD"
    assert describe_recovery_point(context, tiered, arn)["StorageClass"] == "COLD"
    assert point.snapshot_id in cold_snapshots(context, tiered)
    # gone from the warm repository, data included (the only point there)
    assert warm_snapshot not in snapshot_ids(context, tiered)
    assert (tmp_path / "cold" / "cold.tier" / tiered / "config").exists()
    assert not any(path.is_file() for path in (tmp_path / "warm" / tiered / "data").rglob("*"))
    assert event_types(context, arn) == ["RECOVERY_POINT_MOVED_TO_COLD"]
    assert pending_removals(context) == []

    restored = restore_point(context, arn, tmp_path / "restored")
    assert read_files(restored) == read_files(source)
    cold = open_tier_repository(context, tiered, Tier.COLD)
    assert check(cold, read_data_fraction=1.0).ok
    # nothing left to do: a second run changes nothing
    again = run_lifecycle(context, prune_grace_seconds=0)
    assert again.moved_to_cold == [] and again.expired == [] and again.repositories_pruned == []


def test_expiry_forgets_the_snapshot_and_prune_frees_the_data(
    context: ServiceContext, clock: FakeClock, source: Path, tmp_path: Path
) -> None:
    create_backup_vault(context, "main")
    keep = back_up_point(context, "main", make_data(tmp_path / "keep", size=100 * 1024, seed=b"k"))
    arn = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 3})
    expired_snapshot = point_row(context, arn).snapshot_id  # type: ignore[union-attr]
    data_directory = tmp_path / "data" / "vaults" / "main" / "data"
    size_before = sum(path.stat().st_size for path in data_directory.rglob("*") if path.is_file())

    clock.advance(timedelta(days=3))
    report = run_lifecycle(context)  # the service's grace: packs are marked, not yet deleted
    assert report.expired == [arn] and point_row(context, arn) is None
    assert expired_snapshot not in snapshot_ids(context, "main")
    assert report.repositories_pruned == ["main/WARM"] and report.packs_deleted == 0
    assert [row["State"] for row in pending_removals(context)] == ["PRUNED"]
    assert list((tmp_path / "data" / "vaults" / "main" / "deletions").iterdir())
    assert event_types(context, arn)[-1] == "RECOVERY_POINT_DELETED"

    report = run_lifecycle(context, prune_grace_seconds=0)  # later: the grace has passed, the sweep runs
    assert report.packs_deleted > 0 and report.bytes_freed > 500 * 1024
    assert pending_removals(context) == []
    size_after = sum(path.stat().st_size for path in data_directory.rglob("*") if path.is_file())
    assert size_after < size_before - 500 * 1024
    repository = open_vault_repository(context, "main")
    assert check(repository, read_data_fraction=1.0).ok
    assert read_files(restore_point(context, keep, tmp_path / "restored")) == read_files(tmp_path / "keep")


def test_expired_cold_points_are_removed_from_the_cold_tier(
    context: ServiceContext, clock: FakeClock, tiered: str, source: Path
) -> None:
    arn = back_up_point(
        context, tiered, source, lifecycle={"MoveToColdStorageAfterDays": 1, "DeleteAfterDays": 91}
    )
    clock.advance(timedelta(days=1))
    run_lifecycle(context, prune_grace_seconds=0)
    cold_id = point_row(context, arn).snapshot_id  # type: ignore[union-attr]
    assert cold_snapshots(context, tiered) == [cold_id]
    clock.advance(timedelta(days=90))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.expired == [arn]
    assert cold_snapshots(context, tiered) == []
    assert "tiered/COLD" in report.repositories_pruned and report.packs_deleted > 0


def test_vault_lock_min_retention_delays_expiry(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main")
    # a point made before the lock, with a retention shorter than the lock's minimum
    arn = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 2})
    put_backup_vault_lock_configuration(context, "main", min_retention_days=10, changeable_for_days=3)
    clock.advance(timedelta(days=3))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.held_by_vault_lock == [arn] and report.expired == []
    assert point_row(context, arn) is not None
    clock.advance(timedelta(days=7))
    assert run_lifecycle(context, prune_grace_seconds=0).expired == [arn]


def test_a_location_without_a_cold_tier_keeps_points_warm(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main")
    arn = back_up_point(context, "main", source, lifecycle=COLD_AND_DELETE)
    clock.advance(timedelta(days=6))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.moved_to_cold == [] and not report.failed
    assert point_row(context, arn).storage_class == "WARM"  # type: ignore[union-attr]


def test_a_run_that_died_after_copying_reuses_the_copy(
    context: ServiceContext, clock: FakeClock, tiered: str, source: Path, tmp_path: Path
) -> None:
    arn = back_up_point(context, tiered, source, lifecycle=COLD_AND_DELETE)
    point = point_row(context, arn)
    assert point is not None and point.snapshot_id
    # what a run that crashed right after the copy leaves behind
    warm = open_vault_repository(context, tiered)
    cold = open_tier_repository(context, tiered, Tier.COLD, create=True)
    snapshot = load_snapshot(warm, point.snapshot_id)
    earlier = copy_snapshot(warm, snapshot, cold, tags=[POINT_TAG_PREFIX + point.id])
    clock.advance(timedelta(days=5))

    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.moved_to_cold == [arn]
    assert cold_snapshots(context, tiered) == [earlier.id]
    assert point_row(context, arn).snapshot_id == earlier.id  # type: ignore[union-attr]
    assert read_files(restore_point(context, arn, tmp_path / "restored")) == read_files(source)


def test_a_run_that_died_after_recording_finishes_the_removal(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main")
    arn = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 1})
    snapshot = point_row(context, arn).snapshot_id  # type: ignore[union-attr]
    clock.advance(timedelta(days=1))
    from backvault.control.lifecycle_engine import LifecycleReport, expire_due_points

    expire_due_points(context, LifecycleReport())  # the row is gone, the forget has not happened yet
    assert point_row(context, arn) is None and snapshot in snapshot_ids(context, "main")
    assert [row["State"] for row in pending_removals(context)] == ["PENDING"]

    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.snapshots_forgotten == 1 and snapshot not in snapshot_ids(context, "main")
    assert pending_removals(context) == []


def test_cold_tier_as_an_s3_storage_class(
    context: ServiceContext, clock: FakeClock, s3_bucket: tuple[str, str], source: Path, tmp_path: Path
) -> None:
    endpoint, bucket = s3_bucket
    create_storage_location(
        context,
        "s3store",
        "s3",
        bucket=bucket,
        prefix="vaults",
        endpoint_url=endpoint,
        region="us-east-1",
        cold_storage_class="STANDARD_IA",
    )
    create_backup_vault(context, "s3vault", location_name="s3store")
    arn = back_up_point(context, "s3vault", source, lifecycle=COLD_AND_DELETE)
    clock.advance(timedelta(days=5))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.moved_to_cold == [arn], report.failed

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = client.list_objects_v2(Bucket=bucket, Prefix="vaults/cold.tier/s3vault/")["Contents"]
    classes = {item["Key"].split("/")[3]: set() for item in objects}
    for item in objects:
        classes[item["Key"].split("/")[3]].add(item.get("StorageClass", "STANDARD"))
    assert classes["data"] == {"STANDARD_IA"}
    assert classes["config"] == {"STANDARD"} and classes["index"] == {"STANDARD"}
    assert read_files(restore_point(context, arn, tmp_path / "restored")) == read_files(source)
    warm = client.list_objects_v2(Bucket=bucket, Prefix="vaults/s3vault/snapshots/")
    assert warm.get("KeyCount", 0) == 0
