"""Copy jobs: StartCopyJob, DescribeCopyJob, ListCopyJobs, and the COPY job handler.

A copy job copies one recovery point into another vault, which may live in another storage location
(the destination is named by its ARN, whose region is the location's name). Only chunks the
destination repository lacks are sent, re-encrypted under its key (repo/transfer.py). The copy gets
its own recovery point in the destination vault, with SourceBackupVaultArn set and the copy's
lifecycle: the one given with the job, or else the source point's (a plan's CopyAction without a
Lifecycle keeps the source's, domain/plans.py). The destination vault's lock applies: a lifecycle
outside its MinRetentionDays/MaxRetentionDays is refused (StartCopyJob) or fails the job (copy
actions of backup plans).

The handler is restartable: the destination snapshot carries the job's id as a tag, so an attempt
that follows a crash reuses the copy made before it, and the destination point is created once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType, RecoveryPoint
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.job_engine import JobResult, JobRun, JobState, PermanentJobError, create_job
from backvault.control.pagination import paginate
from backvault.control.point_storage import load_snapshot
from backvault.control.recovery_points import (
    get_point_row,
    open_recovery_point_repository,
    resource_name,
    stored_lifecycle,
)
from backvault.control.vaults import get_vault_row, open_vault_repository, vault_lock
from backvault.domain.arn import (
    BackupArnKind,
    backup_plan_arn,
    parse_arn,
    parse_backup_arn,
    recovery_point_arn,
)
from backvault.domain.errors import (
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.lifecycle import Lifecycle, StorageClass, calculate_lifecycle
from backvault.domain.vault import check_retention_for_new_point
from backvault.repo.errors import RepositoryError
from backvault.repo.snapshot import Snapshot
from backvault.repo.transfer import TransferStats, copy_snapshot, find_snapshots_tagged

COPY_TAG_PREFIX = "backvault:copy-job="
# AWS's CopyJob states, from the engine's: a copy has no PENDING, ABORTING, ABORTED or EXPIRED.
AWS_STATE = {
    JobState.CREATED: "CREATED",
    JobState.PENDING: "CREATED",
    JobState.RUNNING: "RUNNING",
    JobState.ABORTING: "RUNNING",
    JobState.COMPLETED: "COMPLETED",
    JobState.PARTIAL: "PARTIAL",
    JobState.FAILED: "FAILED",
    JobState.ABORTED: "FAILED",
    JobState.EXPIRED: "FAILED",
}


# --- starting ------------------------------------------------------------------------------------


def start_copy_job(
    context: ServiceContext,
    recovery_point_arn: str,
    source_backup_vault_name: str,
    destination_backup_vault_arn: str,
    iam_role_arn: str,
    *,
    idempotency_token: str | None = None,
    lifecycle: Any = None,
) -> dict[str, Any]:
    """Start copying a recovery point to another vault; the same IdempotencyToken returns the same job."""
    parse_arn(expect_str(iam_role_arn, "IamRoleArn"))
    requested = None if lifecycle is None else Lifecycle.from_aws(lifecycle, "Lifecycle")
    with context.catalog.transaction() as session:
        source_vault = get_vault_row(session, source_backup_vault_name)
        point = get_point_row(session, recovery_point_arn, vault_name=source_vault.name)
        destination = destination_vault(session, destination_backup_vault_arn)
        effective = requested if requested is not None else stored_lifecycle(point)
        check_retention_for_new_point(vault_lock(destination), effective)
        job = create_copy_job(
            session,
            context,
            source_recovery_point_arn=point.arn,
            destination_backup_vault_arn=destination.arn,
            lifecycle=requested,
            iam_role_arn=iam_role_arn,
            idempotency_token=idempotency_token,
        )
        return {"CopyJobId": job.id, "CreationDate": job.creation_date, "IsParent": False}


def create_copy_job(
    session: Session,
    context: ServiceContext,
    *,
    source_recovery_point_arn: str,
    destination_backup_vault_arn: str,
    lifecycle: Lifecycle | dict[str, Any] | None = None,
    parent_job_id: str | None = None,
    iam_role_arn: str | None = None,
    idempotency_token: str | None = None,
) -> Job:
    """Insert a COPY job in the caller's transaction (backup handlers call this for copy actions)."""
    if idempotency_token:
        earlier = session.scalars(
            select(Job).where(Job.job_type == JobType.COPY.value, Job.idempotency_token == idempotency_token)
        ).first()
        if earlier is not None:
            return earlier
    point = get_point_row(session, source_recovery_point_arn)
    destination = destination_vault(session, destination_backup_vault_arn)
    if destination.name == point.vault_name:
        raise InvalidParameterValueException(
            f"Recovery point {point.arn} is already in backup vault {destination.name!r}; copy it to "
            "another vault."
        )
    source_vault = get_vault_row(session, point.vault_name)
    if isinstance(lifecycle, dict):
        lifecycle = Lifecycle.from_aws(lifecycle, "Lifecycle")
    parameters: dict[str, Any] = {"SourceBackupVaultArn": source_vault.arn}
    if lifecycle is not None:
        parameters["Lifecycle"] = lifecycle.to_aws()
    if iam_role_arn:
        parameters["IamRoleArn"] = iam_role_arn
    return create_job(
        session,
        context,
        JobType.COPY,
        resource_arn=point.resource_arn,
        resource_type=point.resource_type,
        vault_name=point.vault_name,
        destination_vault_arn=destination.arn,
        recovery_point_arn=point.arn,
        plan_id=point.plan_id,
        plan_version_id=point.plan_version_id,
        rule_id=point.rule_id,
        parent_job_id=parent_job_id,
        idempotency_token=idempotency_token,
        parameters=parameters,
    )


def destination_vault(session: Session, destination_backup_vault_arn: str) -> BackupVault:
    """Return the vault a DestinationBackupVaultArn names (its region must be the vault's location)."""
    arn = expect_str(destination_backup_vault_arn, "DestinationBackupVaultArn")
    parsed = parse_backup_arn(arn, BackupArnKind.BACKUP_VAULT)
    vault = session.get(BackupVault, parsed.identifier)
    if vault is None:
        raise ResourceNotFoundException(
            f"Destination backup vault {parsed.identifier!r} does not exist ({arn})."
        )
    if vault.arn != arn:
        raise InvalidParameterValueException(
            f"DestinationBackupVaultArn {arn} does not match backup vault {vault.name!r}, whose ARN is "
            f"{vault.arn} (the region is the vault's storage location, the account is this server's)."
        )
    return vault


# --- reading -------------------------------------------------------------------------------------


def describe_copy_job(context: ServiceContext, copy_job_id: str) -> dict[str, Any]:
    """Return DescribeCopyJob's answer."""
    with context.catalog.transaction() as session:
        job = session.get(Job, expect_str(copy_job_id, "CopyJobId"))
        if job is None or job.job_type != JobType.COPY:
            raise ResourceNotFoundException(f"Copy job {copy_job_id!r} does not exist.")
        return {"CopyJob": copy_job_to_aws(context, job)}


def list_copy_jobs(
    context: ServiceContext,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
    by_resource_arn: str | None = None,
    by_state: str | None = None,
    by_created_before: datetime | None = None,
    by_created_after: datetime | None = None,
    by_resource_type: str | None = None,
    by_destination_vault_arn: str | None = None,
    by_account_id: str | None = None,
    by_complete_before: datetime | None = None,
    by_complete_after: datetime | None = None,
    by_parent_job_id: str | None = None,
    by_message_category: str | None = None,
) -> dict[str, Any]:
    """Return ListCopyJobs' answer, filtered as AWS filters."""
    statement = select(Job).where(Job.job_type == JobType.COPY.value)
    if by_resource_arn is not None:
        statement = statement.where(Job.resource_arn == expect_str(by_resource_arn, "ByResourceArn"))
    if by_state is not None:
        states = [engine.value for engine, aws in AWS_STATE.items() if aws == by_state]
        if not states:
            allowed = ", ".join(sorted(set(AWS_STATE.values())))
            raise InvalidParameterValueException(f"ByState {by_state!r} is not a copy job state ({allowed}).")
        statement = statement.where(Job.state.in_(states))
    for value, where, column, before in (
        (by_created_before, "ByCreatedBefore", Job.creation_date, True),
        (by_created_after, "ByCreatedAfter", Job.creation_date, False),
        (by_complete_before, "ByCompleteBefore", Job.completion_date, True),
        (by_complete_after, "ByCompleteAfter", Job.completion_date, False),
    ):
        if value is not None:
            instant = _instant(value, where)
            statement = statement.where(column < instant if before else column > instant)
    if by_resource_type is not None:
        statement = statement.where(Job.resource_type == expect_str(by_resource_type, "ByResourceType"))
    if by_destination_vault_arn is not None:
        statement = statement.where(
            Job.destination_vault_arn == expect_str(by_destination_vault_arn, "ByDestinationVaultArn")
        )
    if by_account_id is not None and by_account_id not in (context.account, "ANY"):
        statement = statement.where(Job.id.is_(None))
    if by_parent_job_id is not None:
        statement = statement.where(Job.parent_job_id == expect_str(by_parent_job_id, "ByParentJobId"))
    if by_message_category is not None and by_message_category != "ANY":
        category = expect_str(by_message_category, "ByMessageCategory")
        if category == "SUCCESS":
            statement = statement.where(Job.state == JobState.COMPLETED.value)
        else:
            statement = statement.where(Job.status_message.contains(category))
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [Job.id],
            operation="ListCopyJobs",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"CopyJobs": [copy_job_to_aws(context, row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def copy_job_to_aws(context: ServiceContext, job: Job) -> dict[str, Any]:
    """Return AWS's CopyJob shape."""
    parameters = job.parameters or {}
    body: dict[str, Any] = {
        "AccountId": context.account,
        "CopyJobId": job.id,
        "SourceRecoveryPointArn": job.recovery_point_arn,
        "DestinationBackupVaultArn": job.destination_vault_arn,
        "ResourceArn": job.resource_arn,
        "ResourceType": job.resource_type,
        "CreationDate": job.creation_date,
        "State": AWS_STATE.get(JobState(job.state), job.state),
        "BackupSizeInBytes": job.backup_size_in_bytes,
        "IsParent": False,
    }
    optional: dict[str, Any] = {
        "SourceBackupVaultArn": parameters.get("SourceBackupVaultArn"),
        "DestinationRecoveryPointArn": parameters.get("DestinationRecoveryPointArn"),
        "CompletionDate": job.completion_date,
        "StatusMessage": job.status_message,
        "IamRoleArn": parameters.get("IamRoleArn"),
        "ParentJobId": job.parent_job_id,
        "ResourceName": resource_name(job.resource_arn) if job.resource_arn else None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if job.plan_id:
        created_by = {
            "BackupPlanId": job.plan_id,
            "BackupPlanArn": backup_plan_arn(context.arn_context(), job.plan_id),
        }
        if job.plan_version_id:
            created_by["BackupPlanVersion"] = job.plan_version_id
        if job.rule_id:
            created_by["BackupRuleId"] = job.rule_id
        body["CreatedBy"] = created_by
    return body


# --- the handler ---------------------------------------------------------------------------------


def run_copy_job(run: JobRun) -> JobResult:
    """The COPY job handler: copy the snapshot, then record the destination recovery point."""
    try:
        return _run(run)
    except (InvalidParameterValueException, InvalidRequestException, ResourceNotFoundException) as error:
        raise PermanentJobError(error.message) from error
    except RepositoryError as error:  # damaged source data: trying again reads the same damage
        raise PermanentJobError(f"The source recovery point cannot be read: {error}") from error


def _run(run: JobRun) -> JobResult:
    context = run.context
    job = run.job()
    parameters = dict(job.parameters or {})
    with context.catalog.transaction() as session:
        destination = destination_vault(session, job.destination_vault_arn or "")
        destination_name, destination_arn = destination.name, destination.arn
        lock = vault_lock(destination)
        done = parameters.get("DestinationRecoveryPointArn")
        if done and session.scalars(select(RecoveryPoint.id).where(RecoveryPoint.arn == done)).first():
            return JobResult(JobState.COMPLETED)  # a previous attempt finished all but the job row
        source = get_point_row(session, job.recovery_point_arn or "")
        requested = parameters.get("Lifecycle")
        lifecycle = Lifecycle.from_aws(requested, "Lifecycle") if requested else stored_lifecycle(source)
    check_retention_for_new_point(lock, lifecycle)  # the vault lock may have changed since the start

    stats = TransferStats()
    with run.step("copy"):
        source_repository, point = open_recovery_point_repository(context, job.recovery_point_arn or "")
        try:
            destination_repository = open_vault_repository(context, destination_name)
            try:
                marker = COPY_TAG_PREFIX + job.id
                earlier = find_snapshots_tagged(destination_repository, marker) if run.attempt > 1 else []
                if earlier:
                    copied: Snapshot = earlier[0]
                else:
                    snapshot = load_snapshot(source_repository, point.snapshot_id or "")
                    copied = copy_snapshot(
                        source_repository,
                        snapshot,
                        destination_repository,
                        tags=[*snapshot.tags, marker],
                        heartbeat=lambda count: run.heartbeat(count),
                        stats=stats,
                    )
            finally:
                destination_repository.store.close()
        finally:
            source_repository.store.close()
    with run.step("lifecycle"):
        arn = _record_destination_point(context, point, copied, destination_name, destination_arn, lifecycle)
        run.update(
            parameters={**parameters, "DestinationRecoveryPointArn": arn},
            backup_size_in_bytes=point.backup_size_in_bytes,
            bytes_transferred=stats.bytes_stored,
        )
    return JobResult(JobState.COMPLETED)


def _record_destination_point(
    context: ServiceContext,
    source: RecoveryPoint,
    copied: Snapshot,
    vault_name: str,
    vault_arn: str,
    lifecycle: Lifecycle | None,
) -> str:
    """Create the copy's recovery point (once: a retry finds the row made for the same snapshot)."""
    now = context.now()
    with context.catalog.transaction() as session:
        existing = session.scalars(
            select(RecoveryPoint).where(
                RecoveryPoint.vault_name == vault_name, RecoveryPoint.snapshot_id == copied.id
            )
        ).first()
        if existing is not None:
            return existing.arn
        vault = get_vault_row(session, vault_name)
        source_vault = session.get(BackupVault, source.vault_name)
        calculated = calculate_lifecycle(now, lifecycle)
        point_id = str(uuid.uuid4())
        row = RecoveryPoint(
            id=point_id,
            arn=recovery_point_arn(context.arn_context(vault.location_name), point_id),
            vault_name=vault.name,
            resource_arn=source.resource_arn,
            resource_type=source.resource_type,
            status=source.status if source.status in ("COMPLETED", "PARTIAL") else "COMPLETED",
            status_message=source.status_message,
            creation_date=now,
            completion_date=now,
            plan_id=source.plan_id,
            plan_version_id=source.plan_version_id,
            rule_id=source.rule_id,
            source_backup_vault_arn=source_vault.arn if source_vault is not None else None,
            lifecycle=None if lifecycle is None else lifecycle.to_aws(),
            move_to_cold_storage_at=calculated.move_to_cold_storage_at,
            delete_at=calculated.delete_at,
            storage_class=StorageClass.WARM.value,
            snapshot_id=copied.id,
            backup_size_in_bytes=source.backup_size_in_bytes,
            tags=dict(source.tags or {}),
        )
        session.add(row)
        if vault.arn != vault_arn:
            raise DependencyFailureException(f"Backup vault {vault.name!r} changed while the copy ran.")
        return row.arn


def _instant(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidParameterValueException(f"{where} must be a timestamp with a time zone.")
    return value
