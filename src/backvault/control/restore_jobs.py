"""Restore jobs: StartRestoreJob, DescribeRestoreJob, ListRestoreJobs, GetRestoreJobMetadata,
GetRecoveryPointRestoreMetadata, and the RESTORE handler the workers run.

Restore ``Metadata`` is what the resource type's connector accepts (GetRecoveryPointRestoreMetadata
lists it with defaults that make a new copy, e.g. a Filesystem ``TargetPath``), plus backvault's own
``EndpointName``: the source endpoint to restore into (by default the one the resource came from).
Restores never overwrite an existing resource unless the connector's metadata says so.

AWS shows restore jobs with a ``Status`` of PENDING, RUNNING, COMPLETED, ABORTED or FAILED; the
engine's states map onto those (a restore that left some items out is COMPLETED with a
StatusMessage naming them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType, RecoveryPoint
from backvault.control.catalog.models import BackupVault, ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.endpoints import endpoint_spec, get_endpoint_row
from backvault.control.job_engine import JobResult, JobRun, JobState, JobStopped, create_job, get_job
from backvault.control.job_handlers import (
    classified,
    close_repository,
    expect_time,
    filter_times,
    load_snapshot,
    open_point_repository,
    paginate_jobs,
    percent_done,
    vault_arn_of,
)
from backvault.domain.arn import ResourceType, build_resource_arn, parse_arn, parse_resource_arn
from backvault.domain.errors import (
    BackupServiceError,
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_mapping,
    expect_str,
)
from backvault.repo.errors import RepositoryError
from backvault.sources.base import ConnectorError, EndpointSpec, RestoreRequest, get_connector
from backvault.storage.base import StorageError

ENDPOINT_KEY = "EndpointName"
RESTORABLE_POINT_STATES = ("COMPLETED", "PARTIAL", "AVAILABLE")
# Engine state -> AWS RestoreJob Status.
_STATUS = {
    JobState.CREATED.value: "PENDING",
    JobState.PENDING.value: "PENDING",
    JobState.RUNNING.value: "RUNNING",
    JobState.ABORTING.value: "RUNNING",
    JobState.ABORTED.value: "ABORTED",
    JobState.COMPLETED.value: "COMPLETED",
    JobState.PARTIAL.value: "COMPLETED",
    JobState.FAILED.value: "FAILED",
    JobState.EXPIRED.value: "FAILED",
}


def start_restore_job(
    context: ServiceContext,
    recovery_point_arn: str,
    metadata: dict[str, str],
    *,
    iam_role_arn: str | None = None,
    idempotency_token: str | None = None,
    resource_type: str | None = None,
    restore_testing_plan_arn: str | None = None,
    copy_source_tags_to_restored_resource: bool | None = None,
) -> dict[str, Any]:
    """Queue a restore of a recovery point; the same IdempotencyToken returns the same job.

    CopySourceTagsToRestoredResource is accepted and recorded; restored copies take their tags from
    where they land (a Filesystem copy restores its ``.backvault-tags`` file with the data).
    """
    arn = expect_str(recovery_point_arn, "RecoveryPointArn")
    body = _metadata(metadata)
    if iam_role_arn is not None:
        parse_arn(expect_str(iam_role_arn, "IamRoleArn"))
    token = None if idempotency_token is None else expect_str(idempotency_token, "IdempotencyToken")
    with context.catalog.transaction() as session:
        if token:
            earlier = session.scalars(
                select(Job).where(Job.job_type == JobType.RESTORE.value, Job.idempotency_token == token)
            ).first()
            if earlier is not None:
                return {"RestoreJobId": earlier.id}
        point = _point(session, arn)
        if point.status not in RESTORABLE_POINT_STATES or point.storage_class == "DELETED":
            raise InvalidRequestException(
                f"Recovery point {arn} is {point.status} ({point.storage_class}) and cannot be restored."
            )
        if resource_type is not None and expect_str(resource_type, "ResourceType") != point.resource_type:
            raise InvalidParameterValueException(
                f"ResourceType {resource_type!r} does not match the recovery point's type "
                f"{point.resource_type!r}."
            )
        endpoint_name = body.get(ENDPOINT_KEY) or _source_endpoint(session, point.resource_arn)
        endpoint = get_endpoint_row(session, endpoint_name)
        if endpoint.endpoint_type != point.resource_type:
            raise InvalidParameterValueException(
                f"Source endpoint {endpoint.name!r} holds {endpoint.endpoint_type} resources; the recovery "
                f"point is a {point.resource_type} backup."
            )
        parameters: dict[str, Any] = {"Metadata": body}
        if iam_role_arn is not None:
            parameters["IamRoleArn"] = iam_role_arn
        if copy_source_tags_to_restored_resource is not None:
            parameters["CopySourceTagsToRestoredResource"] = bool(copy_source_tags_to_restored_resource)
        if restore_testing_plan_arn is not None:
            parameters["RestoreTestingPlanArn"] = expect_str(
                restore_testing_plan_arn, "RestoreTestingPlanArn"
            )
        job = create_job(
            session,
            context,
            JobType.RESTORE,
            resource_arn=point.resource_arn,
            resource_type=point.resource_type,
            vault_name=point.vault_name,
            recovery_point_arn=point.arn,
            idempotency_token=token,
            parameters=parameters,
        )
        return {"RestoreJobId": job.id}


def describe_restore_job(context: ServiceContext, restore_job_id: str) -> dict[str, Any]:
    """Return DescribeRestoreJob's answer, with backvault's step history under ``Steps``."""
    with context.catalog.transaction() as session:
        job = _restore_job(session, restore_job_id)
        body = _job_member(session, context, job)
        body["Steps"] = [dict(step) for step in job.steps or []]
        return body


def list_restore_jobs(
    context: ServiceContext,
    *,
    by_account_id: str | None = None,
    by_resource_type: str | None = None,
    by_created_before: datetime | None = None,
    by_created_after: datetime | None = None,
    by_status: str | None = None,
    by_complete_before: datetime | None = None,
    by_complete_after: datetime | None = None,
    by_restore_testing_plan_arn: str | None = None,
    by_parent_job_id: str | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListRestoreJobs' answer, newest first, with AWS's filters."""
    statement = select(Job).where(Job.job_type == JobType.RESTORE.value)
    if by_account_id is not None and by_account_id != context.account:
        statement = statement.where(Job.id.is_(None))
    if by_resource_type is not None:
        statement = statement.where(Job.resource_type == expect_str(by_resource_type, "ByResourceType"))
    if by_status is not None:
        statement = statement.where(Job.state.in_(_states_of(by_status)))
    if by_parent_job_id is not None:
        statement = statement.where(Job.parent_job_id == expect_str(by_parent_job_id, "ByParentJobId"))
    statement = filter_times(
        statement, by_created_before, by_created_after, by_complete_before, by_complete_after
    )
    plan_arn = None if by_restore_testing_plan_arn is None else expect_str(by_restore_testing_plan_arn, "Arn")
    operation = "ListRestoreJobs" if plan_arn is None else f"ListRestoreJobs/{plan_arn}"
    with context.catalog.transaction() as session:
        members: list[dict[str, Any]] = []
        token: str | None = next_token
        # The plan filter looks inside the parameters document, which SQL cannot index portably.
        while True:
            rows, token = paginate_jobs(session, statement, operation, token, max_results)
            for row in rows:
                if plan_arn is None or (row.parameters or {}).get("RestoreTestingPlanArn") == plan_arn:
                    members.append(_job_member(session, context, row))
            if members or token is None or plan_arn is None:
                break
        response: dict[str, Any] = {"RestoreJobs": members}
        if token:
            response["NextToken"] = token
        return response


def list_restore_jobs_by_protected_resource(
    context: ServiceContext,
    resource_arn: str,
    *,
    by_status: str | None = None,
    by_recovery_point_creation_date_after: datetime | None = None,
    by_recovery_point_creation_date_before: datetime | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListRestoreJobsByProtectedResource's answer: restores of one resource's points, newest first."""
    arn = str(parse_resource_arn(expect_str(resource_arn, "ResourceArn")))
    statement = select(Job).where(Job.job_type == JobType.RESTORE.value, Job.resource_arn == arn)
    if by_status is not None:
        statement = statement.where(Job.state.in_(_states_of(by_status)))
    after, before = by_recovery_point_creation_date_after, by_recovery_point_creation_date_before
    if after is not None or before is not None:
        statement = statement.join(RecoveryPoint, RecoveryPoint.arn == Job.recovery_point_arn)
        if after is not None:
            statement = statement.where(
                RecoveryPoint.creation_date > expect_time(after, "ByRecoveryPointCreationDateAfter")
            )
        if before is not None:
            statement = statement.where(
                RecoveryPoint.creation_date < expect_time(before, "ByRecoveryPointCreationDateBefore")
            )
    with context.catalog.transaction() as session:
        rows, token = paginate_jobs(
            session, statement, f"ListRestoreJobsByProtectedResource/{arn}", next_token, max_results
        )
        response: dict[str, Any] = {"RestoreJobs": [_job_member(session, context, row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def get_restore_job_metadata(context: ServiceContext, restore_job_id: str) -> dict[str, Any]:
    """Return GetRestoreJobMetadata's answer: the metadata the job was started with."""
    with context.catalog.transaction() as session:
        job = _restore_job(session, restore_job_id)
        return {"RestoreJobId": job.id, "Metadata": dict((job.parameters or {}).get("Metadata") or {})}


def get_recovery_point_restore_metadata(
    context: ServiceContext,
    backup_vault_name: str,
    recovery_point_arn: str,
    *,
    backup_vault_account_id: str | None = None,
) -> dict[str, Any]:
    """Return the metadata a restore of this point accepts, filled with defaults for a new copy."""
    if backup_vault_account_id is not None and backup_vault_account_id != context.account:
        raise ResourceNotFoundException(
            f"No recovery point {recovery_point_arn} in account {backup_vault_account_id}."
        )
    with context.catalog.transaction() as session:
        point = _point(session, expect_str(recovery_point_arn, "RecoveryPointArn"))
        if point.vault_name != expect_str(backup_vault_name, "BackupVaultName"):
            raise ResourceNotFoundException(
                f"Backup vault {backup_vault_name!r} holds no recovery point {point.arn}."
            )
        endpoint_name = _source_endpoint(session, point.resource_arn)
        resource_name = _resource_name(session, point.resource_arn)
        vault_arn = _vault_arn(session, point)
        arn, vault_name, snapshot_id, resource_type = (
            point.arn,
            point.vault_name,
            point.snapshot_id,
            point.resource_type,
        )
    spec = endpoint_spec(context, endpoint_name)
    repository = None
    try:
        repository, snapshot_id = open_point_repository(context, arn, vault_name, snapshot_id or "")
        snapshot = load_snapshot(repository, snapshot_id)
        defaults = get_connector(resource_type).restore_metadata(spec, resource_name, snapshot)
    except ConnectorError as error:
        raise InvalidRequestException(f"Recovery point {arn}: {error}") from None
    except (RepositoryError, StorageError) as error:
        raise DependencyFailureException(f"Recovery point {arn} cannot be read: {error}") from None
    finally:
        close_repository(repository)
    return {
        "BackupVaultArn": vault_arn,
        "RecoveryPointArn": arn,
        "RestoreMetadata": {**defaults, ENDPOINT_KEY: spec.name},
        "ResourceType": resource_type,
    }


def restore_job_target(context: ServiceContext, restore_job_id: str) -> dict[str, Any]:
    """Where a finished restore put its copy: EndpointName, ResourceName and CreatedResourceArn (if any)."""
    with context.catalog.transaction() as session:
        parameters = _restore_job(session, restore_job_id).parameters or {}
        keys = (ENDPOINT_KEY, "CreatedResourceName", "CreatedResourceArn")
        return {key: parameters[key] for key in keys if parameters.get(key) is not None}


# --- the RESTORE handler -------------------------------------------------------------------------


def run_restore_job(run: JobRun) -> JobResult:
    """Restore the job's recovery point through its resource type's connector and record the copy."""
    context = run.context
    job = run.job()
    parameters = dict(job.parameters or {})
    metadata = dict(parameters.get("Metadata") or {})
    with classified(f"Preparing the restore of {job.recovery_point_arn}"):
        with context.catalog.transaction() as session:
            point = _point(session, job.recovery_point_arn or "")
            endpoint_name = metadata.pop(ENDPOINT_KEY, None) or _source_endpoint(session, point.resource_arn)
            resource_name = _resource_name(session, point.resource_arn)
            vault_name, snapshot_id, resource_type = (
                point.vault_name,
                point.snapshot_id or "",
                point.resource_type,
            )
            point_arn, size = point.arn, point.backup_size_in_bytes
        spec = endpoint_spec(context, endpoint_name)
        connector = get_connector(resource_type)
    repository = None
    try:
        with classified(f"Opening the repository of {point_arn}"):
            repository, snapshot_id = open_point_repository(context, point_arn, vault_name, snapshot_id)
        with run.step("restore"), classified(f"Restore of {point_arn}"):
            snapshot = load_snapshot(repository, snapshot_id)
            request = RestoreRequest(
                spec,
                resource_name,
                repository,
                snapshot,
                metadata,
                heartbeat=lambda done: run.heartbeat(done),
            )
            outcome = connector.restore(request)
    finally:
        close_repository(repository)
    created_arn = _created_arn(context, spec, outcome.resource_name)
    with context.catalog.transaction() as session:
        row = session.scalars(select(Job).where(Job.id == run.job_id).with_for_update()).first()
        if row is None or row.lease_owner != run.worker_id or row.attempts != run.attempt:
            raise JobStopped(f"Job {run.job_id} was taken over; this attempt does not record its restore.")
        recorded = {
            **(row.parameters or {}),
            ENDPOINT_KEY: spec.name,
            "CreatedResourceName": outcome.resource_name,
        }
        if created_arn is not None:
            recorded["CreatedResourceArn"] = created_arn
        row.parameters = recorded
        row.bytes_transferred = outcome.bytes_restored
        row.backup_size_in_bytes = size
        restored = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == point_arn)).first()
        if restored is not None:
            restored.last_restore_time = context.now()
    with run.step("notify"):
        pass  # the engine records RESTORE_JOB_COMPLETED; notification sinks follow the events
    place = created_arn or outcome.resource_name
    if outcome.problems:
        shown = "; ".join(outcome.problems[:3])
        message = f"Restored to {place}, but {len(outcome.problems)} item(s) were not restored: {shown}."
        return JobResult(JobState.PARTIAL, message)
    return JobResult(JobState.COMPLETED, f"Restored to {place}.")


# --- helpers -------------------------------------------------------------------------------------


def _metadata(metadata: Any) -> dict[str, str]:
    body = expect_mapping(metadata if metadata is not None else {}, "Metadata")
    result: dict[str, str] = {}
    for key, value in body.items():
        result[expect_str(key, "Metadata key")] = expect_str(value, f"Metadata[{key!r}]")
    return result


def _point(session: Session, recovery_point_arn: str) -> RecoveryPoint:
    point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == recovery_point_arn)).first()
    if point is None:
        raise ResourceNotFoundException(f"Recovery point {recovery_point_arn!r} does not exist.")
    return point


def _source_endpoint(session: Session, resource_arn: str) -> str:
    """The endpoint a resource was discovered behind (from the catalog, else from its ARN)."""
    resource = session.get(ProtectedResource, resource_arn)
    if resource is not None and resource.endpoint_name:
        return resource.endpoint_name
    parsed = parse_resource_arn(resource_arn)
    if parsed.endpoint is None:
        raise InvalidRequestException(
            f"The endpoint that held {resource_arn} is no longer registered; give Metadata EndpointName to "
            "choose where to restore."
        )
    return parsed.endpoint


def _resource_name(session: Session, resource_arn: str) -> str:
    resource = session.get(ProtectedResource, resource_arn)
    return resource.resource_name if resource is not None else parse_resource_arn(resource_arn).name


def _vault_arn(session: Session, point: RecoveryPoint) -> str | None:
    vault = session.get(BackupVault, point.vault_name)
    return vault.arn if vault is not None else None


def _created_arn(context: ServiceContext, spec: EndpointSpec, resource_name: str) -> str | None:
    """The ARN of the restored copy, when it has one (a copy outside an endpoint's root has none)."""
    global_types = (ResourceType.S3, ResourceType.DYNAMODB)
    endpoint = None if spec.endpoint_type in global_types else spec.name
    try:
        return build_resource_arn(context.arn_context(), spec.endpoint_type, endpoint, resource_name)
    except BackupServiceError:
        return None


def _restore_job(session: Session, restore_job_id: str) -> Job:
    job = get_job(session, expect_str(restore_job_id, "RestoreJobId"))
    if job.job_type != JobType.RESTORE.value:
        raise ResourceNotFoundException(
            f"No restore job with id {restore_job_id!r} (it is a {job.job_type} job)."
        )
    return job


def _states_of(status: Any) -> list[str]:
    text = expect_str(status, "ByStatus")
    states = [state for state, shown in _STATUS.items() if shown == text]
    if not states:
        known = ", ".join(sorted(set(_STATUS.values())))
        raise InvalidParameterValueException(
            f"ByStatus {text!r} is not a restore job status; use one of {known}."
        )
    return states


def _job_member(session: Session, context: ServiceContext, job: Job) -> dict[str, Any]:
    parameters = job.parameters or {}
    body: dict[str, Any] = {
        "AccountId": context.account,
        "RestoreJobId": job.id,
        "RecoveryPointArn": job.recovery_point_arn,
        "CreationDate": job.creation_date,
        "Status": _STATUS.get(job.state, job.state),
        "PercentDone": percent_done(job),
        "BackupSizeInBytes": job.backup_size_in_bytes,
        "ResourceType": job.resource_type,
    }
    point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == job.recovery_point_arn)).first()
    optional = {
        "CompletionDate": job.completion_date,
        "StatusMessage": job.status_message,
        "IamRoleArn": parameters.get("IamRoleArn"),
        "CreatedResourceArn": parameters.get("CreatedResourceArn"),
        "RecoveryPointCreationDate": point.creation_date if point is not None else None,
        "BackupVaultArn": vault_arn_of(session, context, job),
        "SourceResourceArn": job.resource_arn,
    }
    # Restore testing records how the validation and the clean-up of the copy went.
    for key in ("ValidationStatus", "ValidationStatusMessage", "DeletionStatus", "DeletionStatusMessage"):
        optional[key] = parameters.get(key)
    if parameters.get("RestoreTestingPlanArn"):
        optional["CreatedBy"] = {"RestoreTestingPlanArn": parameters["RestoreTestingPlanArn"]}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body
