"""Backup jobs: start, run on a worker, record the recovery point, filters, failures and stops."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import ROLE, FakeClock
from sqlalchemy import select

from backvault.control import backup_handler
from backvault.control.backup_jobs import (
    describe_backup_job,
    list_backup_jobs,
    start_backup_job,
    stop_backup_job,
)
from backvault.control.catalog import Job, JobType, ProtectedResource, RecoveryPoint
from backvault.control.context import ServiceContext
from backvault.control.discovery import discover_endpoint, list_protected_resources
from backvault.control.endpoints import register_source_endpoint
from backvault.control.job_engine import (
    JobRun,
    JobState,
    RetryableJobError,
    RetryPolicy,
    create_job,
    request_stop,
)
from backvault.control.job_handlers import HANDLERS, point_tag
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.vaults import create_backup_vault, open_vault_repository
from backvault.control.worker import Worker
from backvault.domain.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
)
from backvault.repo.check import check
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import BackupRequest
from backvault.sources.filesystem.connector import FilesystemConnector

PREFIX = "arn:aws:backvault:local:000000000000:filesystem:files"
PHOTOS = f"{PREFIX}/photos"
DOCS = f"{PREFIX}/docs"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the filesystem backup cache out of the home directory."""
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with two resources."""
    path = tmp_path / "files"
    (path / "photos" / "2024").mkdir(parents=True)
    (path / "photos" / "2024" / "a.jpg").write_bytes(bytes(range(256)) * 4000)
    (path / "photos" / "notes.txt").write_text("holiday\n")
    (path / "photos" / ".backvault-tags").write_text("backup=daily\n")
    (path / "docs").mkdir()
    (path / "docs" / "letter.txt").write_text("hello\n")
    return path


@pytest.fixture
def setup(context: ServiceContext, root: Path) -> ServiceContext:
    """A vault "main", an endpoint "files" over root, discovered."""
    create_backup_vault(context, "main")
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    discover_endpoint(context, "files")
    return context


def worker(context: ServiceContext) -> Worker:
    """A worker with the service's handlers."""
    return Worker(context, worker_id="test-worker", handlers=HANDLERS)


def points(context: ServiceContext) -> list[RecoveryPoint]:
    """Every recovery point row."""
    with context.catalog.transaction() as session:
        return list(session.scalars(select(RecoveryPoint)))


def test_backup_job_runs_and_records_the_point(setup: ServiceContext, clock: FakeClock) -> None:
    context = setup
    started = start_backup_job(
        context,
        "main",
        PHOTOS,
        ROLE,
        lifecycle={"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 365},
        recovery_point_tags={"team": "photo"},
    )
    assert started["RecoveryPointArn"].startswith("arn:aws:backup:local:000000000000:recovery-point:")
    assert started["IsParent"] is False
    created = describe_backup_job(context, started["BackupJobId"])
    assert created["State"] == "CREATED"
    assert created["StartBy"] == clock.current + timedelta(hours=8)

    clock.advance(timedelta(minutes=5))
    assert worker(context).run_once()
    job = describe_backup_job(context, started["BackupJobId"])
    assert job["State"] == "COMPLETED", job.get("StatusMessage")
    assert job["RecoveryPointArn"] == started["RecoveryPointArn"]
    assert job["PercentDone"] == "100.0"
    assert job["BackupSizeInBytes"] == 256 * 4000 + len("holiday\n") + len("backup=daily\n")
    assert job["ResourceName"] == "photos"
    assert job["BackupVaultArn"] == "arn:aws:backup:local:000000000000:backup-vault:main"
    assert job["MessageCategory"] == "SUCCESS"
    assert job["RecoveryPointLifecycle"] == {"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 365}
    assert [(step["Name"], step["Status"]) for step in job["Steps"]] == [
        ("backup", "SUCCEEDED"),
        ("verify", "SUCCEEDED"),
        ("copy", "SUCCEEDED"),
        ("lifecycle", "SUCCEEDED"),
        ("notify", "SUCCEEDED"),
    ]

    [point] = points(context)
    assert point.arn == started["RecoveryPointArn"]
    assert point.status == "COMPLETED"
    assert point.storage_class == "WARM"
    assert point.creation_date == clock.current
    assert point.move_to_cold_storage_at == clock.current + timedelta(days=30)
    assert point.delete_at == clock.current + timedelta(days=365)
    assert point.lifecycle == {"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 365}
    assert point.tags == {"team": "photo"}
    assert point.backup_job_id == started["BackupJobId"]
    with context.catalog.transaction() as session:
        resource = session.get(ProtectedResource, PHOTOS)
        assert resource is not None
        assert resource.last_backup_time == clock.current
        assert resource.last_recovery_point_arn == point.arn
        assert resource.last_backup_vault_arn == job["BackupVaultArn"]
    assert [item["ResourceArn"] for item in list_protected_resources(context)["Results"]] == [PHOTOS]

    repository = open_vault_repository(context, "main")
    [snapshot] = repository.list_snapshots()
    assert snapshot.id == point.snapshot_id
    assert point_tag(point.id) in snapshot.tags
    assert "team=photo" in snapshot.tags
    assert check(repository).ok
    # BytesTransferred is what reached the vault: every chunk was new, and a.jpg's repeated bytes compress.
    assert 0 < job["BytesTransferred"] == snapshot.summary["bytes_stored"] < job["BackupSizeInBytes"]


def test_an_unchanged_second_backup_transfers_almost_nothing(setup: ServiceContext) -> None:
    first = start_backup_job(setup, "main", PHOTOS, ROLE)
    assert worker(setup).run_once()
    second = start_backup_job(setup, "main", PHOTOS, ROLE)
    assert worker(setup).run_once()
    before, after = (describe_backup_job(setup, job["BackupJobId"]) for job in (first, second))
    assert before["BackupSizeInBytes"] == after["BackupSizeInBytes"]
    assert after["State"] == "COMPLETED"
    # Only the new snapshot's trees and metadata are stored again, not the files' chunks.
    assert after["BytesTransferred"] < before["BytesTransferred"] / 2


def test_idempotency_token_returns_the_same_job(setup: ServiceContext) -> None:
    first = start_backup_job(setup, "main", PHOTOS, ROLE, idempotency_token="once")
    again = start_backup_job(setup, "main", PHOTOS, ROLE, idempotency_token="once")
    assert again == first
    other = start_backup_job(setup, "main", PHOTOS, ROLE, idempotency_token="twice")
    assert other["BackupJobId"] != first["BackupJobId"]
    assert len(list_backup_jobs(setup)["BackupJobs"]) == 2


def test_start_refuses_bad_requests(setup: ServiceContext) -> None:
    with pytest.raises(ResourceNotFoundException, match="Backup vault 'nope'"):
        start_backup_job(setup, "nope", PHOTOS, ROLE)
    with pytest.raises(ResourceNotFoundException, match="run discovery"):
        start_backup_job(setup, "main", f"{PREFIX}/unknown", ROLE)
    with pytest.raises(InvalidParameterValueException, match="LogicallyAirGapped"):
        start_backup_job(setup, "main", PHOTOS, ROLE, logically_air_gapped_backup_vault_arn="arn:aws:x:::y")
    with pytest.raises(InvalidParameterValueException, match="StartWindowMinutes"):
        start_backup_job(setup, "main", PHOTOS, ROLE, start_window_minutes=30)
    with pytest.raises(InvalidParameterValueException, match="90 days after"):
        start_backup_job(
            setup, "main", PHOTOS, ROLE, lifecycle={"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 20}
        )
    put_backup_vault_lock_configuration(setup, "main", min_retention_days=7, max_retention_days=30)
    with pytest.raises(InvalidParameterValueException, match="MinRetentionDays"):
        start_backup_job(setup, "main", PHOTOS, ROLE, lifecycle={"DeleteAfterDays": 1})
    with pytest.raises(InvalidParameterValueException, match="forever"):
        start_backup_job(setup, "main", PHOTOS, ROLE)
    assert start_backup_job(setup, "main", PHOTOS, ROLE, lifecycle={"DeleteAfterDays": 10})["BackupJobId"]


def test_list_filters_and_pages(setup: ServiceContext, clock: FakeClock) -> None:
    context = setup
    create_backup_vault(context, "second")
    first = start_backup_job(context, "main", PHOTOS, ROLE)["BackupJobId"]
    clock.advance(timedelta(minutes=1))
    middle = clock.current
    second = start_backup_job(context, "second", DOCS, ROLE)["BackupJobId"]
    clock.advance(timedelta(minutes=1))
    third = start_backup_job(context, "main", DOCS, ROLE)["BackupJobId"]
    assert worker(context).run_once()  # the oldest due job: first

    def ids(**filters: object) -> list[str]:
        return [job["BackupJobId"] for job in list_backup_jobs(context, **filters)["BackupJobs"]]  # type: ignore[arg-type]

    assert ids() == [third, second, first]
    assert ids(by_state="COMPLETED") == [first]
    assert ids(by_state="CREATED") == [third, second]
    assert ids(by_backup_vault_name="second") == [second]
    assert ids(by_resource_arn=DOCS) == [third, second]
    assert ids(by_resource_type="Filesystem") == [third, second, first]
    assert ids(by_resource_type="PostgreSQL") == []
    assert ids(by_created_after=middle - timedelta(seconds=1)) == [third, second]
    assert ids(by_created_before=middle) == [first]
    assert ids(by_complete_after=middle - timedelta(hours=1)) == [first]
    assert ids(by_account_id="111111111111") == []
    assert ids(by_message_category="SUCCESS") == [first]
    assert ids(by_message_category="ANY") == [third, second, first]
    with pytest.raises(InvalidParameterValueException, match="not a job state"):
        ids(by_state="DONE")

    seen: list[str] = []
    token = None
    while True:
        page = list_backup_jobs(context, max_results=1, next_token=token)
        seen += [job["BackupJobId"] for job in page["BackupJobs"]]
        token = page.get("NextToken")
        if token is None:
            break
    assert seen == [third, second, first]
    with pytest.raises(InvalidParameterValueException, match="NextToken"):
        list_backup_jobs(context, next_token="garbage")


def test_connector_failure_fails_the_job_without_a_point(setup: ServiceContext, root: Path) -> None:
    job_id = start_backup_job(setup, "main", PHOTOS, ROLE)["BackupJobId"]
    shutil.rmtree(root)
    assert worker(setup).run_once()
    job = describe_backup_job(setup, job_id)
    assert job["State"] == "FAILED"
    assert "does not exist" in job["StatusMessage"]
    assert job["Steps"][-1]["Name"] == "backup"
    assert job["Steps"][-1]["Status"] == "FAILED"
    assert points(setup) == []
    assert open_vault_repository(setup, "main").list_snapshots() == []


def test_stop_before_start_aborts_at_once(setup: ServiceContext) -> None:
    job_id = start_backup_job(setup, "main", PHOTOS, ROLE)["BackupJobId"]
    assert stop_backup_job(setup, job_id) == {}
    assert describe_backup_job(setup, job_id)["State"] == "ABORTED"
    assert not worker(setup).run_once()
    with pytest.raises(ResourceNotFoundException):
        stop_backup_job(setup, "no-such-job")


def test_stop_while_running_leaves_no_point_and_a_clean_repository(setup: ServiceContext) -> None:
    job_id = start_backup_job(setup, "main", PHOTOS, ROLE)["BackupJobId"]

    def stop_then_back_up(run: JobRun) -> backup_handler.JobResult:
        with setup.catalog.transaction() as session:
            request_stop(session, setup, run.job_id)  # RUNNING -> ABORTING, seen at the first heartbeat
        run.min_heartbeat_seconds = 0  # this backup takes less than the worker's heartbeat interval
        return backup_handler.run_backup_job(run)

    handlers = {**HANDLERS, JobType.BACKUP: stop_then_back_up}
    assert Worker(setup, worker_id="stopper", handlers=handlers).run_once()
    job = describe_backup_job(setup, job_id)
    assert job["State"] == "ABORTED"
    assert points(setup) == []
    repository = open_vault_repository(setup, "main")
    assert repository.list_snapshots() == []
    assert check(repository).ok


def test_a_retry_adopts_the_snapshot_an_interrupted_attempt_committed(
    setup: ServiceContext, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start_backup_job(setup, "main", PHOTOS, ROLE)["BackupJobId"]
    original = backup_handler._record_point
    calls: list[int] = []

    def crash_first(*args: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RetryableJobError("the catalog went away")
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_handler, "_record_point", crash_first)
    fast = RetryPolicy(max_attempts=3, base_delay_seconds=1, max_delay_seconds=1)
    assert Worker(setup, worker_id="w", handlers=HANDLERS, retry_policy=fast).run_once()
    assert describe_backup_job(setup, job_id)["State"] == "PENDING"
    clock.advance(timedelta(minutes=1))
    assert Worker(setup, worker_id="w", handlers=HANDLERS, retry_policy=fast).run_once()
    job = describe_backup_job(setup, job_id)
    assert job["State"] == "COMPLETED", job.get("StatusMessage")
    [point] = points(setup)
    snapshots = open_vault_repository(setup, "main").list_snapshots()
    assert [snapshot.id for snapshot in snapshots] == [point.snapshot_id]  # one snapshot, not two


def test_copy_actions_start_child_copy_jobs(setup: ServiceContext) -> None:
    create_backup_vault(setup, "offsite")
    offsite = "arn:aws:backup:local:000000000000:backup-vault:offsite"
    with setup.catalog.transaction() as session:
        job = create_job(
            session,
            setup,
            JobType.BACKUP,
            resource_arn=PHOTOS,
            resource_type="Filesystem",
            vault_name="main",
            parameters={
                "CopyActions": [
                    {"DestinationBackupVaultArn": offsite, "Lifecycle": {"DeleteAfterDays": 30}},
                    {"DestinationBackupVaultArn": "arn:aws:backup:local:000000000000:backup-vault:gone"},
                ]
            },
        )
        job_id = job.id
    assert worker(setup).run_once()
    described = describe_backup_job(setup, job_id)
    assert described["State"] == "COMPLETED", described.get("StatusMessage")
    assert "Started 1 copy job(s)." in described["StatusMessage"]
    assert "backup-vault:gone not started" in described["StatusMessage"]
    assert described["NumberOfChildJobs"] == 1
    with setup.catalog.transaction() as session:
        [copy] = session.scalars(select(Job).where(Job.parent_job_id == job_id))
        assert copy.job_type == "COPY"
        assert copy.recovery_point_arn == described["RecoveryPointArn"]
        assert copy.destination_vault_arn == offsite


class _SkippingConnector(FilesystemConnector):
    """The filesystem connector, reporting one item it could not read (as an unreadable file would)."""

    def backup(self, request: BackupRequest) -> Snapshot:
        snapshot = super().backup(request)
        snapshot.partial = True
        snapshot.errors = [{"path": "/photos/secret.txt", "error": "permission denied"}]
        return snapshot


def test_partial_backup_gives_a_partial_job(setup: ServiceContext, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads every file, so the skipped item is simulated at the connector boundary.
    monkeypatch.setattr(backup_handler, "get_connector", lambda _type: _SkippingConnector())
    job_id = start_backup_job(setup, "main", PHOTOS, ROLE)["BackupJobId"]
    assert worker(setup).run_once()
    job = describe_backup_job(setup, job_id)
    assert job["State"] == JobState.PARTIAL.value
    assert "secret.txt: permission denied" in job["StatusMessage"]
    [point] = points(setup)
    assert point.status_message is not None and "Partial backup: 1 item(s)" in point.status_message
