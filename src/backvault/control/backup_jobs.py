"""Backup jobs: StartBackupJob, DescribeBackupJob, ListBackupJobs, StopBackupJob.

A backup job is a ``jobs`` row that a worker runs through ``run_backup_job`` (the BACKUP handler). Its
recovery point ARN is chosen when the job is created (AWS returns it from StartBackupJob), so every
attempt of the job records the same point and a retry can never create a second one. The job's
``parameters`` carry what a rule or a request asked for, under AWS's names: ``Lifecycle``,
``RecoveryPointTags``, ``BackupOptions``, ``CopyActions``, ``IamRoleArn``, ``StartWindowMinutes``,
``CompletionWindowMinutes`` and ``CreatedBy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.job_engine import (
    COMPLETION_WINDOW_PARAMETER,
    JobState,
    create_job,
    get_job,
    request_stop,
)
from backvault.control.job_handlers import (
    filter_times,
    new_point_id,
    paginate_jobs,
    percent_done,
    vault_arn_of,
)
from backvault.control.vaults import get_vault_row, vault_lock
from backvault.domain.arn import (
    parse_arn,
    parse_resource_arn,
    recovery_point_arn,
)
from backvault.domain.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
    expect_int,
    expect_mapping,
    expect_str,
)
from backvault.domain.lifecycle import lifecycle_from_request
from backvault.domain.plans import (
    DEFAULT_COMPLETION_WINDOW_MINUTES,
    DEFAULT_START_WINDOW_MINUTES,
    MAX_WINDOW_MINUTES,
    MIN_START_WINDOW_MINUTES,
    validate_recovery_point_tags,
)
from backvault.domain.vault import check_retention_for_new_point

SUCCESS_CATEGORY = "SUCCESS"
BACKUP_TYPE = "FULL"  # every snapshot is complete by itself; deduplication makes it cost an increment


def start_backup_job(
    context: ServiceContext,
    backup_vault_name: str,
    resource_arn: str,
    iam_role_arn: str,
    *,
    idempotency_token: str | None = None,
    start_window_minutes: int | None = None,
    complete_window_minutes: int | None = None,
    lifecycle: Mapping[str, Any] | None = None,
    recovery_point_tags: Mapping[str, str] | None = None,
    backup_options: Mapping[str, str] | None = None,
    logically_air_gapped_backup_vault_arn: str | None = None,
    index: str | None = None,
) -> dict[str, Any]:
    """Queue an on-demand backup; the same IdempotencyToken returns the same job."""
    if logically_air_gapped_backup_vault_arn is not None:
        raise InvalidParameterValueException(
            "LogicallyAirGappedBackupVaultArn is not supported: backvault vaults are standard vaults; use "
            "BackupVaultName (a vault lock in compliance mode protects its points)."
        )
    if index is not None and index not in ("ENABLED", "DISABLED"):
        raise InvalidParameterValueException(f"Index must be ENABLED or DISABLED, got {index!r}.")
    arn = str(parse_resource_arn(expect_str(resource_arn, "ResourceArn")))
    parse_arn(expect_str(iam_role_arn, "IamRoleArn"))
    parsed_lifecycle = lifecycle_from_request(lifecycle)
    tags = validate_recovery_point_tags(recovery_point_tags or {}, "RecoveryPointTags")
    options = _options(backup_options)
    start_window = _window(start_window_minutes, DEFAULT_START_WINDOW_MINUTES, "StartWindowMinutes")
    if start_window < MIN_START_WINDOW_MINUTES:
        raise InvalidParameterValueException(
            f"StartWindowMinutes ({start_window}) must be at least {MIN_START_WINDOW_MINUTES}."
        )
    complete_window = _window(
        complete_window_minutes, DEFAULT_COMPLETION_WINDOW_MINUTES, "CompleteWindowMinutes"
    )
    token = None if idempotency_token is None else expect_str(idempotency_token, "IdempotencyToken")
    now = context.now()
    with context.catalog.transaction() as session:
        # The row lock serialises starts into one vault, so two requests with one token make one job.
        vault = get_vault_row(session, backup_vault_name, for_update=True)
        if token:
            earlier = session.scalars(
                select(Job).where(Job.job_type == JobType.BACKUP.value, Job.idempotency_token == token)
            ).first()
            if earlier is not None:
                return _start_answer(earlier)
        resource = session.get(ProtectedResource, arn)
        if resource is None:
            raise ResourceNotFoundException(
                f"Resource {arn} is not known; register its endpoint and run discovery first."
            )
        check_retention_for_new_point(vault_lock(vault), parsed_lifecycle)
        parameters: dict[str, Any] = {
            "IamRoleArn": iam_role_arn,
            "BackupVaultArn": vault.arn,
            "StartWindowMinutes": start_window,
            COMPLETION_WINDOW_PARAMETER: complete_window,
            "RecoveryPointTags": tags,
        }
        if parsed_lifecycle is not None:
            parameters["Lifecycle"] = parsed_lifecycle.to_aws()
        if options:
            parameters["BackupOptions"] = options
        job = create_job(
            session,
            context,
            JobType.BACKUP,
            resource_arn=arn,
            resource_type=resource.resource_type,
            vault_name=vault.name,
            recovery_point_arn=recovery_point_arn(context.arn_context(vault.location_name), new_point_id()),
            idempotency_token=token,
            parameters=parameters,
            start_by=now + timedelta(minutes=start_window),
        )
        return _start_answer(job)


def describe_backup_job(context: ServiceContext, backup_job_id: str) -> dict[str, Any]:
    """Return DescribeBackupJob's answer, with backvault's step history under ``Steps``."""
    with context.catalog.transaction() as session:
        job = _backup_job(session, backup_job_id)
        body = _job_member(session, context, job)
        body["Steps"] = [dict(step) for step in job.steps or []]
        body.update(VaultType="BACKUP_VAULT", IsEncrypted=True)
        lifecycle = (job.parameters or {}).get("Lifecycle")
        if lifecycle:
            body["RecoveryPointLifecycle"] = dict(lifecycle)
        children = list(session.scalars(select(Job.state).where(Job.parent_job_id == job.id)))
        if children:
            counts: dict[str, int] = {}
            for state in children:
                counts[state] = counts.get(state, 0) + 1
            body["ChildJobsInState"] = counts
            body["NumberOfChildJobs"] = len(children)
        return body


def list_backup_jobs(
    context: ServiceContext,
    *,
    by_resource_arn: str | None = None,
    by_state: str | None = None,
    by_backup_vault_name: str | None = None,
    by_created_before: datetime | None = None,
    by_created_after: datetime | None = None,
    by_resource_type: str | None = None,
    by_account_id: str | None = None,
    by_complete_before: datetime | None = None,
    by_complete_after: datetime | None = None,
    by_parent_job_id: str | None = None,
    by_message_category: str | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListBackupJobs' answer, newest first, with AWS's filters."""
    statement = select(Job).where(Job.job_type == JobType.BACKUP.value)
    if by_account_id is not None and by_account_id != context.account:
        statement = statement.where(Job.id.is_(None))  # every job here belongs to this one account
    if by_resource_arn is not None:
        statement = statement.where(Job.resource_arn == expect_str(by_resource_arn, "ByResourceArn"))
    if by_state is not None:
        statement = statement.where(Job.state == _state(by_state, "ByState"))
    if by_backup_vault_name is not None:
        statement = statement.where(Job.vault_name == expect_str(by_backup_vault_name, "ByBackupVaultName"))
    if by_resource_type is not None:
        statement = statement.where(Job.resource_type == expect_str(by_resource_type, "ByResourceType"))
    if by_parent_job_id is not None:
        statement = statement.where(Job.parent_job_id == expect_str(by_parent_job_id, "ByParentJobId"))
    category = None if by_message_category is None else expect_str(by_message_category, "ByMessageCategory")
    if category == SUCCESS_CATEGORY:
        statement = statement.where(Job.state == JobState.COMPLETED.value)
    elif category is not None and category.upper() != "ANY":
        # backvault does not classify messages: a category matches the messages that name it.
        statement = statement.where(Job.status_message.ilike(f"%{category}%"))
    statement = filter_times(
        statement, by_created_before, by_created_after, by_complete_before, by_complete_after
    )
    with context.catalog.transaction() as session:
        rows, token = paginate_jobs(session, statement, "ListBackupJobs", next_token, max_results)
        response: dict[str, Any] = {"BackupJobs": [_job_member(session, context, row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def stop_backup_job(context: ServiceContext, backup_job_id: str) -> dict[str, Any]:
    """Stop a backup job: a waiting one at once, a running one at its next heartbeat."""
    with context.catalog.transaction() as session:
        job = _backup_job(session, backup_job_id)
        request_stop(session, context, job.id)
        return {}


# --- helpers -------------------------------------------------------------------------------------


def _backup_job(session: Session, backup_job_id: str) -> Job:
    job = get_job(session, expect_str(backup_job_id, "BackupJobId"))
    if job.job_type != JobType.BACKUP.value:
        raise ResourceNotFoundException(
            f"No backup job with id {backup_job_id!r} (it is a {job.job_type} job)."
        )
    return job


def _start_answer(job: Job) -> dict[str, Any]:
    return {
        "BackupJobId": job.id,
        "RecoveryPointArn": job.recovery_point_arn,
        "CreationDate": job.creation_date,
        "IsParent": False,
    }


def _job_member(session: Session, context: ServiceContext, job: Job) -> dict[str, Any]:
    parameters = job.parameters or {}
    body: dict[str, Any] = {
        "AccountId": context.account,
        "BackupJobId": job.id,
        "BackupVaultName": job.vault_name,
        "ResourceArn": job.resource_arn,
        "CreationDate": job.creation_date,
        "State": job.state,
        "PercentDone": percent_done(job),
        "BackupSizeInBytes": job.backup_size_in_bytes,
        "BytesTransferred": job.bytes_transferred,
        "ResourceType": job.resource_type,
        "BackupType": BACKUP_TYPE,
        "IsParent": False,
        "InitiationDate": job.creation_date,
    }
    optional = {
        "BackupVaultArn": vault_arn_of(session, context, job),
        "RecoveryPointArn": job.recovery_point_arn,
        "CompletionDate": job.completion_date,
        "StatusMessage": job.status_message,
        "IamRoleArn": parameters.get("IamRoleArn"),
        "StartBy": job.start_by,
        "ExpectedCompletionDate": job.complete_by,
        "ParentJobId": job.parent_job_id,
        "BackupOptions": parameters.get("BackupOptions"),
        "CreatedBy": _created_by(job),
        "MessageCategory": SUCCESS_CATEGORY if job.state == JobState.COMPLETED.value else None,
        "ResourceName": _resource_name(session, job.resource_arn),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _created_by(job: Job) -> dict[str, Any] | None:
    recorded = (job.parameters or {}).get("CreatedBy")
    if recorded:
        return dict(recorded)
    if job.plan_id is None:
        return None
    body = {
        "BackupPlanId": job.plan_id,
        "BackupPlanVersion": job.plan_version_id,
        "BackupRuleId": job.rule_id,
    }
    return {key: value for key, value in body.items() if value is not None}


def _resource_name(session: Session, resource_arn: str | None) -> str | None:
    if resource_arn is None:
        return None
    row = session.get(ProtectedResource, resource_arn)
    return row.resource_name if row is not None else None


def _state(value: Any, where: str) -> str:
    text = expect_str(value, where)
    try:
        return JobState(text).value
    except ValueError:
        known = ", ".join(state.value for state in JobState)
        raise InvalidParameterValueException(
            f"{where} {text!r} is not a job state; use one of {known}."
        ) from None


def _window(value: Any, default: int, where: str) -> int:
    if value is None:
        return default
    minutes = expect_int(value, where)
    if not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise InvalidParameterValueException(
            f"{where} ({minutes}) must be between 1 and {MAX_WINDOW_MINUTES}."
        )
    return minutes


def _options(options: Mapping[str, str] | None) -> dict[str, str]:
    if options is None:
        return {}
    body = expect_mapping(options, "BackupOptions")
    return {
        expect_str(key, "BackupOptions key"): expect_str(value, f"BackupOptions[{key!r}]")
        for key, value in body.items()
    }
