"""Restore jobs: metadata, restoring to a new path byte for byte, refusing to overwrite, filters."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import ROLE, FakeClock
from sqlalchemy import select

from backvault.control.backup_jobs import describe_backup_job, start_backup_job
from backvault.control.catalog import RecoveryPoint
from backvault.control.context import ServiceContext
from backvault.control.discovery import describe_protected_resource, discover_endpoint
from backvault.control.endpoints import register_source_endpoint
from backvault.control.job_handlers import HANDLERS
from backvault.control.restore_jobs import (
    describe_restore_job,
    get_recovery_point_restore_metadata,
    get_restore_job_metadata,
    list_restore_jobs,
    list_restore_jobs_by_protected_resource,
    restore_job_target,
    start_restore_job,
)
from backvault.control.vaults import create_backup_vault
from backvault.control.worker import Worker
from backvault.domain.errors import InvalidParameterValueException, ResourceNotFoundException

PHOTOS = "arn:aws:backvault:local:000000000000:filesystem:files/photos"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the filesystem backup cache out of the home directory."""
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with one resource holding a few files, one of them spanning several chunks."""
    path = tmp_path / "files"
    (path / "photos" / "2024").mkdir(parents=True)
    (path / "photos" / "2024" / "big.raw").write_bytes(os.urandom(1 << 20) * 3)
    (path / "photos" / "notes.txt").write_text("holiday\n")
    (path / "photos" / "empty").write_bytes(b"")
    (path / "photos" / "link").symlink_to("notes.txt")
    return path


def worker(context: ServiceContext) -> Worker:
    """A worker with the service's handlers."""
    return Worker(context, worker_id="test-worker", handlers=HANDLERS)


@pytest.fixture
def point_arn(context: ServiceContext, root: Path) -> str:
    """A completed recovery point of files/photos in vault "main"."""
    create_backup_vault(context, "main")
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    discover_endpoint(context, "files")
    started = start_backup_job(context, "main", PHOTOS, ROLE)
    assert worker(context).run_once()
    assert describe_backup_job(context, started["BackupJobId"])["State"] == "COMPLETED"
    return str(started["RecoveryPointArn"])


def digests(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, and -> target of every symlink, below directory."""
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        relative = str(path.relative_to(directory))
        if path.is_symlink():
            found[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_recovery_point_restore_metadata(context: ServiceContext, point_arn: str, root: Path) -> None:
    answer = get_recovery_point_restore_metadata(context, "main", point_arn)
    assert answer["RecoveryPointArn"] == point_arn
    assert answer["BackupVaultArn"] == "arn:aws:backup:local:000000000000:backup-vault:main"
    assert answer["ResourceType"] == "Filesystem"
    metadata = answer["RestoreMetadata"]
    assert metadata["EndpointName"] == "files"
    assert metadata["Overwrite"] == "false"
    assert metadata["TargetPath"].startswith(str(root / "photos-restored-"))
    with pytest.raises(ResourceNotFoundException):
        get_recovery_point_restore_metadata(context, "other-vault", point_arn)


def test_restore_to_a_new_path_gives_the_same_bytes(
    context: ServiceContext, point_arn: str, root: Path, clock: FakeClock
) -> None:
    clock.advance(timedelta(hours=1))
    job_id = start_restore_job(context, point_arn, {"TargetPath": "photos-copy"}, iam_role_arn=ROLE)[
        "RestoreJobId"
    ]
    pending = describe_restore_job(context, job_id)
    assert pending["Status"] == "PENDING"
    assert worker(context).run_once()
    job = describe_restore_job(context, job_id)
    assert job["Status"] == "COMPLETED", job.get("StatusMessage")
    assert job["CreatedResourceArn"] == "arn:aws:backvault:local:000000000000:filesystem:files/photos-copy"
    assert job["ResourceType"] == "Filesystem"
    assert job["IamRoleArn"] == ROLE
    assert job["PercentDone"] == "100.0"
    assert [step["Name"] for step in job["Steps"]] == ["restore", "notify"]
    assert digests(root / "photos-copy") == digests(root / "photos")
    assert len(digests(root / "photos")) == 4
    assert get_restore_job_metadata(context, job_id) == {
        "RestoreJobId": job_id,
        "Metadata": {"TargetPath": "photos-copy"},
    }
    assert restore_job_target(context, job_id) == {
        "EndpointName": "files",
        "CreatedResourceName": "photos-copy",
        "CreatedResourceArn": job["CreatedResourceArn"],
    }
    with context.catalog.transaction() as session:
        [point] = session.scalars(select(RecoveryPoint))
        assert point.last_restore_time == clock.current
    described = describe_protected_resource(context, PHOTOS)
    assert described["LatestRestoreJobCreationDate"] == clock.current
    assert described["LatestRestoreExecutionTimeMinutes"] == 0
    assert described["LatestRestoreRecoveryPointCreationDate"] == point.creation_date


def test_restore_refuses_a_non_empty_target(context: ServiceContext, point_arn: str, root: Path) -> None:
    target = root / "occupied"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    job_id = start_restore_job(context, point_arn, {"TargetPath": str(target)})["RestoreJobId"]
    assert worker(context).run_once()
    job = describe_restore_job(context, job_id)
    assert job["Status"] == "FAILED"
    assert "not empty" in job["StatusMessage"]
    assert "CreatedResourceArn" not in job
    assert sorted(os.listdir(target)) == ["mine.txt"]

    overwrite = start_restore_job(context, point_arn, {"TargetPath": str(target), "Overwrite": "true"})
    assert worker(context).run_once()
    assert describe_restore_job(context, overwrite["RestoreJobId"])["Status"] == "COMPLETED"
    assert (target / "mine.txt").read_text() == "keep me"
    assert (target / "notes.txt").read_text() == "holiday\n"


def test_start_validation_idempotency_and_listing(
    context: ServiceContext, point_arn: str, clock: FakeClock
) -> None:
    with pytest.raises(ResourceNotFoundException):
        start_restore_job(context, point_arn + "x", {})
    with pytest.raises(InvalidParameterValueException, match="does not match"):
        start_restore_job(context, point_arn, {}, resource_type="PostgreSQL")
    with pytest.raises(ResourceNotFoundException, match="Source endpoint 'elsewhere'"):
        start_restore_job(context, point_arn, {"EndpointName": "elsewhere"})
    first = start_restore_job(context, point_arn, {"TargetPath": "one"}, idempotency_token="t")
    assert start_restore_job(context, point_arn, {"TargetPath": "two"}, idempotency_token="t") == first
    clock.advance(timedelta(minutes=1))
    second = start_restore_job(context, point_arn, {"TargetPath": "two"})["RestoreJobId"]
    assert worker(context).run_once()  # runs the first one

    def ids(**filters: object) -> list[str]:
        return [job["RestoreJobId"] for job in list_restore_jobs(context, **filters)["RestoreJobs"]]  # type: ignore[arg-type]

    assert ids() == [second, first["RestoreJobId"]]
    assert ids(by_status="COMPLETED") == [first["RestoreJobId"]]
    assert ids(by_status="PENDING") == [second]
    assert ids(by_resource_type="Filesystem") == [second, first["RestoreJobId"]]
    assert ids(by_created_after=clock.current - timedelta(seconds=1)) == [second]
    with pytest.raises(InvalidParameterValueException, match="not a restore job status"):
        ids(by_status="DONE")

    by_resource = list_restore_jobs_by_protected_resource(context, PHOTOS)["RestoreJobs"]
    assert [job["RestoreJobId"] for job in by_resource] == [second, first["RestoreJobId"]]
    pending = list_restore_jobs_by_protected_resource(context, PHOTOS, by_status="PENDING")["RestoreJobs"]
    assert [job["RestoreJobId"] for job in pending] == [second]
    later = clock.current + timedelta(days=1)
    assert list_restore_jobs_by_protected_resource(
        context, PHOTOS, by_recovery_point_creation_date_after=later
    ) == {"RestoreJobs": []}
    other = "arn:aws:backvault:local:000000000000:filesystem:files/docs"
    assert list_restore_jobs_by_protected_resource(context, other) == {"RestoreJobs": []}
