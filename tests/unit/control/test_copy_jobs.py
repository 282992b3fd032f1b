"""Copy jobs: start, run on a worker, byte-identical copies across locations, dedup, vault lock, filters."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from point_helpers import ROLE, back_up_point, make_data, point_row, read_files, restore_point

from backvault.control.catalog import JobType
from backvault.control.context import ServiceContext
from backvault.control.copy_jobs import (
    create_copy_job,
    describe_copy_job,
    list_copy_jobs,
    run_copy_job,
    start_copy_job,
)
from backvault.control.locations import create_storage_location
from backvault.control.recovery_points import describe_recovery_point, list_recovery_points_by_backup_vault
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.vaults import create_backup_vault, open_vault_repository
from backvault.control.worker import Worker
from backvault.domain.errors import InvalidParameterValueException, ResourceNotFoundException
from backvault.repo.check import check


@pytest.fixture
def vaults(context: ServiceContext, tmp_path: Path) -> tuple[str, str]:
    """The default-location vault "main" and vault "offsite" in a second location; returns their ARNs."""
    create_storage_location(context, "offsite", "local", path=str(tmp_path / "offsite"))
    main = create_backup_vault(context, "main")["BackupVaultArn"]
    offsite = create_backup_vault(context, "offsite", location_name="offsite")["BackupVaultArn"]
    return main, offsite


def run_jobs(context: ServiceContext) -> int:
    worker = Worker(context, handlers={JobType.COPY: run_copy_job})
    count = 0
    while worker.run_once():
        count += 1
    return count


def stored_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def test_copy_to_another_location_restores_identically_and_sends_only_missing_chunks(
    context: ServiceContext, clock: FakeClock, vaults: tuple[str, str], tmp_path: Path
) -> None:
    main_arn, offsite_arn = vaults
    source = make_data(tmp_path / "projects", size=2 << 20)
    point = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 35}, tags={"kind": "daily"})
    started = start_copy_job(
        context,
        point,
        "main",
        offsite_arn,
        ROLE,
        lifecycle={"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 200},
    )
    assert started["IsParent"] is False and started["CreationDate"] == clock.current
    job_id = started["CopyJobId"]
    assert describe_copy_job(context, job_id)["CopyJob"]["State"] == "CREATED"
    assert run_jobs(context) == 1

    job = describe_copy_job(context, job_id)["CopyJob"]
    assert job["State"] == "COMPLETED", job.get("StatusMessage")
    assert job["SourceRecoveryPointArn"] == point and job["SourceBackupVaultArn"] == main_arn
    assert job["DestinationBackupVaultArn"] == offsite_arn and job["IamRoleArn"] == ROLE
    assert job["AccountId"] == context.account and job["ResourceType"] == "Filesystem"
    assert job["BackupSizeInBytes"] > 0
    copy_arn = job["DestinationRecoveryPointArn"]
    assert copy_arn.startswith("arn:aws:backup:offsite:000000000000:recovery-point:")
    described = describe_recovery_point(context, "offsite", copy_arn)
    assert described["SourceBackupVaultArn"] == main_arn
    assert described["Lifecycle"] == {"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 200}
    assert described["CalculatedLifecycle"]["DeleteAt"] == clock.current + timedelta(days=200)
    assert point_row(context, copy_arn).tags == {"kind": "daily"}  # type: ignore[union-attr]
    assert read_files(restore_point(context, copy_arn, tmp_path / "restored")) == read_files(source)
    repository = open_vault_repository(context, "offsite")
    assert check(repository, read_data_fraction=1.0).ok

    # a second, similar point: only what changed travels
    offsite_data = tmp_path / "offsite" / "offsite" / "data"
    before = stored_bytes(offsite_data)
    (source / "added.bin").write_bytes(b"new data " * 30_000)
    second = back_up_point(context, "main", source)
    second_job = start_copy_job(context, second, "main", offsite_arn, ROLE)["CopyJobId"]
    run_jobs(context)
    job = describe_copy_job(context, second_job)["CopyJob"]
    assert job["State"] == "COMPLETED"
    growth = stored_bytes(offsite_data) - before
    assert 0 < growth < 200 * 1024  # the 2 MiB of unchanged data was not sent again
    second_copy = job["DestinationRecoveryPointArn"]
    # no lifecycle given: the copy keeps the source's (kept forever here)
    assert "DeleteAt" not in describe_recovery_point(context, "offsite", second_copy)["CalculatedLifecycle"]
    assert read_files(restore_point(context, second_copy, tmp_path / "restored2")) == read_files(source)


def test_a_copy_inherits_the_source_lifecycle_and_the_idempotency_token_dedups(
    context: ServiceContext, vaults: tuple[str, str], tmp_path: Path
) -> None:
    _, offsite_arn = vaults
    point = back_up_point(
        context, "main", make_data(tmp_path / "p", size=10_000), lifecycle={"DeleteAfterDays": 9}
    )
    first = start_copy_job(context, point, "main", offsite_arn, ROLE, idempotency_token="once")
    again = start_copy_job(context, point, "main", offsite_arn, ROLE, idempotency_token="once")
    assert first["CopyJobId"] == again["CopyJobId"]
    run_jobs(context)
    copy_arn = describe_copy_job(context, first["CopyJobId"])["CopyJob"]["DestinationRecoveryPointArn"]
    assert describe_recovery_point(context, "offsite", copy_arn)["Lifecycle"] == {"DeleteAfterDays": 9}
    points = list_recovery_points_by_backup_vault(context, "offsite")["RecoveryPoints"]
    assert [item["RecoveryPointArn"] for item in points] == [copy_arn]


def test_bad_destinations_and_vault_lock_limits_are_refused(
    context: ServiceContext, vaults: tuple[str, str], tmp_path: Path
) -> None:
    main_arn, offsite_arn = vaults
    point = back_up_point(context, "main", make_data(tmp_path / "p", size=10_000))
    wrong_region = offsite_arn.replace(":offsite:", ":local:", 1)
    with pytest.raises(InvalidParameterValueException, match="storage location"):
        start_copy_job(context, point, "main", wrong_region, ROLE)
    with pytest.raises(ResourceNotFoundException):
        start_copy_job(context, point, "main", offsite_arn.replace("vault:offsite", "vault:nowhere"), ROLE)
    with pytest.raises(InvalidParameterValueException, match="already in backup vault"):
        start_copy_job(context, point, "main", main_arn, ROLE)
    with pytest.raises(ResourceNotFoundException):
        start_copy_job(context, point, "offsite", main_arn, ROLE)
    with pytest.raises(InvalidParameterValueException, match="ARN"):
        start_copy_job(context, point, "main", offsite_arn, "not-an-arn")

    put_backup_vault_lock_configuration(context, "offsite", min_retention_days=7, max_retention_days=30)
    with pytest.raises(InvalidParameterValueException, match="forever"):
        start_copy_job(context, point, "main", offsite_arn, ROLE)
    with pytest.raises(InvalidParameterValueException, match="MinRetentionDays"):
        start_copy_job(context, point, "main", offsite_arn, ROLE, lifecycle={"DeleteAfterDays": 3})
    assert list_copy_jobs(context)["CopyJobs"] == []

    # a plan's copy action is checked when the job runs: it fails with the reason
    with context.catalog.transaction() as session:
        job = create_copy_job(
            session, context, source_recovery_point_arn=point, destination_backup_vault_arn=offsite_arn
        )
        job_id = job.id
    run_jobs(context)
    failed = describe_copy_job(context, job_id)["CopyJob"]
    assert failed["State"] == "FAILED" and "at most 30 days" in failed["StatusMessage"]
    assert list_recovery_points_by_backup_vault(context, "offsite")["RecoveryPoints"] == []


def test_list_copy_jobs_filters(
    context: ServiceContext, clock: FakeClock, vaults: tuple[str, str], tmp_path: Path
) -> None:
    main_arn, offsite_arn = vaults
    create_backup_vault(context, "third")
    third_arn = "arn:aws:backup:local:000000000000:backup-vault:third"
    point = back_up_point(context, "main", make_data(tmp_path / "p", size=10_000))
    first = start_copy_job(context, point, "main", offsite_arn, ROLE)["CopyJobId"]
    run_jobs(context)
    clock.advance(timedelta(hours=1))
    second = start_copy_job(context, point, "main", third_arn, ROLE)["CopyJobId"]
    with context.catalog.transaction() as session:
        child = create_copy_job(
            session,
            context,
            source_recovery_point_arn=point,
            destination_backup_vault_arn=third_arn,
            parent_job_id="PARENT",
        ).id

    def ids(**filters: object) -> set[str]:
        return {job["CopyJobId"] for job in list_copy_jobs(context, **filters)["CopyJobs"]}  # type: ignore[arg-type]

    assert ids() == {first, second, child}
    assert ids(by_state="COMPLETED") == {first}
    assert ids(by_state="CREATED") == {second, child}
    assert ids(by_destination_vault_arn=third_arn) == {second, child}
    assert ids(by_created_before=clock.current - timedelta(minutes=30)) == {first}
    assert ids(by_created_after=clock.current - timedelta(minutes=30)) == {second, child}
    assert ids(by_complete_after=clock.current - timedelta(days=1)) == {first}
    assert ids(by_parent_job_id="PARENT") == {child}
    assert ids(by_resource_type="Filesystem") == {first, second, child}
    assert ids(by_account_id="111111111111") == set()
    assert ids(by_message_category="SUCCESS") == {first}
    page = list_copy_jobs(context, max_results=2)
    assert len(page["CopyJobs"]) == 2 and "NextToken" in page
    with pytest.raises(InvalidParameterValueException, match="ByState"):
        list_copy_jobs(context, by_state="DONE")
    with pytest.raises(ResourceNotFoundException):
        describe_copy_job(context, "missing")
    assert main_arn != offsite_arn


def test_a_retry_after_a_crash_reuses_the_copy_and_records_one_point(
    context: ServiceContext,
    clock: FakeClock,
    vaults: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import backvault.control.copy_jobs as copy_jobs

    _, offsite_arn = vaults
    source = make_data(tmp_path / "p", size=300_000)
    point = back_up_point(context, "main", source)
    job_id = start_copy_job(context, point, "main", offsite_arn, ROLE)["CopyJobId"]
    real = copy_jobs._record_destination_point

    def crash(*args: object, **kwargs: object) -> str:
        raise OSError("the worker's machine lost power")

    monkeypatch.setattr(copy_jobs, "_record_destination_point", crash)
    run_jobs(context)
    job = describe_copy_job(context, job_id)["CopyJob"]
    assert job["State"] == "CREATED" and "lost power" in job["StatusMessage"]
    offsite = open_vault_repository(context, "offsite")
    assert len(offsite.list_snapshots()) == 1  # the copy was made before the crash

    monkeypatch.setattr(copy_jobs, "_record_destination_point", real)
    clock.advance(timedelta(hours=2))  # past the retry's backoff
    run_jobs(context)
    job = describe_copy_job(context, job_id)["CopyJob"]
    assert job["State"] == "COMPLETED"
    assert len(offsite.list_snapshots()) == 1
    copy_arn = job["DestinationRecoveryPointArn"]
    assert read_files(restore_point(context, copy_arn, tmp_path / "restored")) == read_files(source)
