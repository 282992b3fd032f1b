"""The whole control plane under a controllable clock: months of a daily plan pass in seconds.

A daily plan selects directories by tag. The test then checks that:
- the tagged directory is backed up by the scheduler and a worker, and a copy lands in a second
  storage location and restores byte for byte;
- a directory created later with the tag is protected on the next run, without touching the plan;
- points move to the cold tier after N days and still restore, and expire after M days;
- a legal hold stops expiry until it is cancelled;
- a compliance-locked vault refuses to delete a point.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

_CONTROL_TESTS = str(Path(__file__).resolve().parents[1] / "unit" / "control")
if _CONTROL_TESTS not in sys.path:
    sys.path.insert(0, _CONTROL_TESTS)

from control_helpers import FakeClock  # noqa: E402

from backvault.control.catalog import open_catalog  # noqa: E402
from backvault.control.context import ServiceContext  # noqa: E402
from backvault.control.discovery import discover_all  # noqa: E402
from backvault.control.endpoints import register_source_endpoint  # noqa: E402
from backvault.control.job_handlers import HANDLERS  # noqa: E402
from backvault.control.legal_holds import cancel_legal_hold, create_legal_hold  # noqa: E402
from backvault.control.lifecycle_engine import run_lifecycle  # noqa: E402
from backvault.control.locations import create_storage_location, ensure_default_location  # noqa: E402
from backvault.control.plans import create_backup_plan  # noqa: E402
from backvault.control.recovery_points import (  # noqa: E402
    delete_recovery_point,
    list_recovery_points_by_backup_vault,
)
from backvault.control.restore_jobs import describe_restore_job, start_restore_job  # noqa: E402
from backvault.control.scheduler import Scheduler  # noqa: E402
from backvault.control.secrets import load_master_secret  # noqa: E402
from backvault.control.selections import create_backup_selection  # noqa: E402
from backvault.control.vault_settings import put_backup_vault_lock_configuration  # noqa: E402
from backvault.control.vaults import create_backup_vault  # noqa: E402
from backvault.control.worker import Worker  # noqa: E402
from backvault.domain.errors import InvalidRequestException  # noqa: E402

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
COLD_AFTER_DAYS = 2
DELETE_AFTER_DAYS = 92  # AWS: at least 90 days after the move to cold


def _tree_digest(root: Path) -> dict[str, str]:
    """Map every file below root (relative path) to the SHA-256 of its bytes."""
    digests = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _make_directory(root: Path, name: str, tag: str | None, seed: int) -> Path:
    directory = root / name
    (directory / "sub").mkdir(parents=True)
    (directory / "small.txt").write_text(f"hello from {name}\n")
    (directory / "sub" / "data.bin").write_bytes(os.urandom(300_000 + seed))
    if tag is not None:
        (directory / ".backvault-tags").write_text(f"backup = {tag}\n")
    return directory


class Installation:
    """A data directory, two storage locations, a vault in each, an endpoint and a daily plan."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        self.catalog = open_catalog(None, data_dir)
        self.context = ServiceContext(
            catalog=self.catalog, master_secret=load_master_secret(data_dir), clock=self.clock
        )
        create_storage_location(self.context, "cold", "local", path=str(tmp_path / "cold"))
        ensure_default_location(self.context, tmp_path / "warm")
        # the default location's cold tier is the "cold" location
        with self.catalog.transaction() as session:
            from backvault.control.catalog.models import StorageLocation

            session.get(StorageLocation, "local").cold_location_name = "cold"  # type: ignore[union-attr]
        create_storage_location(self.context, "dr", "local", path=str(tmp_path / "dr"))
        create_backup_vault(self.context, "main")
        self.dr_vault_arn = create_backup_vault(self.context, "offsite", location_name="dr")["BackupVaultArn"]
        self.sources = tmp_path / "sources"
        self.sources.mkdir()
        register_source_endpoint(self.context, "files", "Filesystem", {"root": str(self.sources)})
        plan = {
            "BackupPlanName": "daily",
            "Rules": [
                {
                    "RuleName": "nightly",
                    "TargetBackupVaultName": "main",
                    "ScheduleExpression": "cron(0 5 ? * * *)",
                    "StartWindowMinutes": 60,
                    "CompletionWindowMinutes": 600,
                    "Lifecycle": {
                        "MoveToColdStorageAfterDays": COLD_AFTER_DAYS,
                        "DeleteAfterDays": DELETE_AFTER_DAYS,
                    },
                    "CopyActions": [
                        {
                            "DestinationBackupVaultArn": self.dr_vault_arn,
                            "Lifecycle": {"DeleteAfterDays": 365},
                        }
                    ],
                }
            ],
        }
        plan_id = create_backup_plan(self.context, plan)["BackupPlanId"]
        create_backup_selection(
            self.context,
            plan_id,
            {
                "SelectionName": "tagged",
                "IamRoleArn": ROLE,
                "ListOfTags": [
                    {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
                ],
            },
        )
        self.scheduler = Scheduler(self.context, scheduler_id="test-scheduler")
        self.worker = Worker(self.context, handlers=HANDLERS, worker_id="test-worker")

    def day(self, number: int, hour: int = 5, minute: int = 10) -> None:
        """Move the clock to the given day (1 = the first of January) at the given time."""
        target = datetime(2026, 1, 1, hour, minute, tzinfo=UTC) + timedelta(days=number - 1)
        assert target >= self.clock.current, "the clock only moves forward"
        self.clock.current = target

    def run_scheduled_work(self) -> None:
        """One scheduler tick, then every job it (or the jobs) created, to the end."""
        discover_all(self.context)
        self.scheduler.tick()
        self.drain()

    def drain(self) -> None:
        for _ in range(50):
            if not self.worker.run_once():
                return
        raise AssertionError("jobs kept coming")

    def points(self, vault: str) -> list[dict[str, Any]]:
        return list_recovery_points_by_backup_vault(self.context, vault)["RecoveryPoints"]

    def restore(self, point_arn: str, target: Path) -> dict[str, Any]:
        job_id = start_restore_job(self.context, point_arn, {"TargetPath": str(target)}, iam_role_arn=ROLE)[
            "RestoreJobId"
        ]
        self.drain()
        return describe_restore_job(self.context, job_id)


@pytest.fixture
def installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Installation:
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")
    monkeypatch.delenv("BACKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("BACKVAULT_MASTER_SECRET", raising=False)
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))
    created = Installation(tmp_path)
    yield created  # type: ignore[misc]
    created.catalog.dispose()


def test_a_daily_plan_protects_copies_tiers_expires_and_respects_holds_and_locks(
    installation: Installation, tmp_path: Path
) -> None:
    inst = installation
    first = _make_directory(inst.sources, "photos", "daily", 1)
    _make_directory(inst.sources, "scratch", None, 2)  # untagged: never backed up

    # Day 1: the tagged directory is backed up, and its copy lands in the second location.
    inst.day(1)
    inst.run_scheduled_work()
    (point,) = inst.points("main")
    assert point["ResourceArn"].endswith(":filesystem:files/photos") and point["Status"] == "COMPLETED"
    (copy,) = inst.points("offsite")
    assert copy["SourceBackupVaultArn"].endswith(":backup-vault:main")
    restored = inst.restore(copy["RecoveryPointArn"], tmp_path / "restored-copy")
    assert restored["Status"] == "COMPLETED", restored
    assert _tree_digest(tmp_path / "restored-copy") == _tree_digest(first)

    # Day 2: a new tagged directory is picked up without touching the plan.
    second = _make_directory(inst.sources, "invoices", "daily", 3)
    inst.day(2)
    inst.run_scheduled_work()
    resources = {p["ResourceArn"].rsplit("/", 1)[1] for p in inst.points("main")}
    assert resources == {"photos", "invoices"}
    assert not any("scratch" in p["ResourceArn"] for p in inst.points("main"))

    # Day 4: the day-1 point is past its cold date: it moved to the cold tier and still restores.
    inst.day(4)
    run_lifecycle(inst.context)
    by_date = sorted(inst.points("main"), key=lambda p: p["CreationDate"])
    day1 = by_date[0]
    assert day1["RecoveryPointArn"] == point["RecoveryPointArn"]
    assert day1["StorageClass"] == "COLD"
    restored = inst.restore(day1["RecoveryPointArn"], tmp_path / "restored-cold")
    assert restored["Status"] == "COMPLETED", restored
    assert _tree_digest(tmp_path / "restored-cold") == _tree_digest(first)

    # A legal hold on photos' points; then the clock passes the delete date of the day-1 and day-2 points.
    hold = create_legal_hold(
        inst.context,
        title="audit 2026",
        description="keep photos",
        recovery_point_selection={"VaultNames": ["main"], "ResourceIdentifiers": [point["ResourceArn"]]},
    )
    inst.day(2 + DELETE_AFTER_DAYS + 1)
    run_lifecycle(inst.context)
    remaining = {p["ResourceArn"].rsplit("/", 1)[1] for p in inst.points("main")}
    assert remaining == {"photos"}, "the held point stays, the unheld expired point is gone"
    assert _tree_digest(second)  # the source itself is untouched by expiry

    cancel_legal_hold(inst.context, hold["LegalHoldId"], cancel_description="audit done")
    run_lifecycle(inst.context)
    assert inst.points("main") == []

    # A compliance lock on the offsite vault: once its lock date passes, deleting a point is refused.
    put_backup_vault_lock_configuration(inst.context, "offsite", min_retention_days=30, changeable_for_days=3)
    inst.day(2 + DELETE_AFTER_DAYS + 5)
    (copy_now,) = [p for p in inst.points("offsite") if p["RecoveryPointArn"] == copy["RecoveryPointArn"]]
    with pytest.raises(InvalidRequestException):
        delete_recovery_point(inst.context, "offsite", copy_now["RecoveryPointArn"])
    assert any(p["RecoveryPointArn"] == copy["RecoveryPointArn"] for p in inst.points("offsite"))
