"""Report plans and report jobs: Create/Describe/Update/Delete/ListReportPlans, Start/Describe/ListReportJobs.

**The bucket is a storage location.** A report plan's ``ReportDeliveryChannel.S3BucketName`` names a
backvault storage location (``local`` by default), not an S3 bucket: reports are written through the
location's object store, so they land in its directory or its S3 bucket and prefix. They go under
``backvault.reports/`` there, a name no vault can have (vault names have no '.'), so a report never
lands inside a vault's repository::

    backvault.reports/[S3KeyPrefix/]Backup/ACCOUNT/REGION/TEMPLATE/YYYY/MM/DD/PLAN_TIME_JOBID.{csv,json,html}

``S3Keys`` in a report job's destination are these keys, preceded by the location's own prefix on S3
(so they are the objects' real keys in the bucket) and relative to the location's directory when it
is local. ``Formats`` takes CSV and JSON (CSV when not given, as AWS does); a readable HTML page is
always written beside them.

A report job runs synchronously inside StartReportJob; its state (RUNNING, then COMPLETED or FAILED
with the reason) is recorded, so Describe/ListReportJobs answer as AWS's do. Compliance reports
re-evaluate their frameworks first, so they show the catalog as it is; job reports list the jobs
created in the 24 hours before the report.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.audit_documents import validate_audit_name, validate_description
from backvault.control.catalog.audit_models import ReportJob, ReportPlan
from backvault.control.catalog.models import StorageLocation
from backvault.control.context import ServiceContext
from backvault.control.events import record_event
from backvault.control.locations import get_location_row, open_location_store
from backvault.control.pagination import paginate
from backvault.control.report_documents import DEFAULT_FORMATS, parse_delivery_channel, parse_report_setting
from backvault.control.report_rendering import (
    EXTENSIONS,
    HTML,
    build_report,
    render,
)
from backvault.domain.arn import report_plan_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    BackupServiceError,
    InvalidParameterValueException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.plans import validate_recovery_point_tags
from backvault.storage.base import StorageError

logger = logging.getLogger(__name__)

REPORTS_ROOT = "backvault.reports"
DEPLOYMENT_COMPLETED = "COMPLETED"
JOB_RUNNING = "RUNNING"
JOB_COMPLETED = "COMPLETED"
JOB_FAILED = "FAILED"
JOB_STATUSES = ("CREATED", JOB_RUNNING, JOB_COMPLETED, JOB_FAILED)
# Event types (the audit's prefix, so they never trigger a framework evaluation).
REPORT_PLAN_CREATED = "AUDIT_REPORT_PLAN_CREATED"
REPORT_PLAN_UPDATED = "AUDIT_REPORT_PLAN_UPDATED"
REPORT_PLAN_DELETED = "AUDIT_REPORT_PLAN_DELETED"
REPORT_JOB_COMPLETED = "AUDIT_REPORT_JOB_COMPLETED"
REPORT_JOB_FAILED = "AUDIT_REPORT_JOB_FAILED"


def create_report_plan(
    context: ServiceContext,
    report_plan_name: str,
    report_delivery_channel: Any,
    report_setting: Any,
    *,
    report_plan_description: str | None = None,
    report_plan_tags: dict[str, str] | None = None,
    idempotency_token: str | None = None,
) -> dict[str, Any]:
    """Create a report plan; a retry with the same IdempotencyToken returns it again."""
    name = validate_audit_name(report_plan_name, "ReportPlanName")
    description = validate_description(report_plan_description, "ReportPlanDescription")
    tags = validate_recovery_point_tags(report_plan_tags or {}, "ReportPlanTags")
    token = expect_str(idempotency_token, "IdempotencyToken") if idempotency_token is not None else None
    with context.catalog.transaction() as session:
        existing = session.get(ReportPlan, name)
        if existing is not None:
            if token is not None and existing.idempotency_token == token:
                return _plan_answer(existing)
            raise AlreadyExistsException(f"Report plan {name!r} already exists.", Arn=existing.arn)
        row = ReportPlan(
            name=name,
            arn=report_plan_arn(context.arn_context(), name),
            description=description,
            delivery_channel=parse_delivery_channel(session, report_delivery_channel),
            report_setting=parse_report_setting(session, context, report_setting),
            deployment_status=DEPLOYMENT_COMPLETED,
            creation_time=context.now(),
            idempotency_token=token,
            tags=tags,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(f"Report plan {name!r} already exists.") from None
        record_event(session, REPORT_PLAN_CREATED, row.creation_time, resource_arn=row.arn)
        return _plan_answer(row)


def describe_report_plan(context: ServiceContext, report_plan_name: str) -> dict[str, Any]:
    """Return DescribeReportPlan's answer."""
    with context.catalog.transaction() as session:
        return {"ReportPlan": report_plan_to_aws(get_report_plan_row(session, report_plan_name))}


def update_report_plan(
    context: ServiceContext,
    report_plan_name: str,
    *,
    report_plan_description: str | None = None,
    report_delivery_channel: Any = None,
    report_setting: Any = None,
    idempotency_token: str | None = None,
) -> dict[str, Any]:
    """Change a report plan's description, delivery channel or setting; a repeated token changes nothing."""
    description = validate_description(report_plan_description, "ReportPlanDescription")
    token = expect_str(idempotency_token, "IdempotencyToken") if idempotency_token is not None else None
    with context.catalog.transaction() as session:
        row = get_report_plan_row(session, report_plan_name, for_update=True)
        if token is not None and token == row.idempotency_token:
            return _plan_answer(row)
        if description is not None:
            row.description = description
        if report_delivery_channel is not None:
            row.delivery_channel = parse_delivery_channel(session, report_delivery_channel)
        if report_setting is not None:
            row.report_setting = parse_report_setting(session, context, report_setting)
        row.idempotency_token = token
        record_event(session, REPORT_PLAN_UPDATED, context.now(), resource_arn=row.arn)
        return _plan_answer(row)


def delete_report_plan(context: ServiceContext, report_plan_name: str) -> dict[str, Any]:
    """Delete a report plan; its report jobs and the reports they wrote stay."""
    with context.catalog.transaction() as session:
        row = get_report_plan_row(session, report_plan_name, for_update=True)
        session.delete(row)
        record_event(session, REPORT_PLAN_DELETED, context.now(), resource_arn=row.arn)
    return {}


def list_report_plans(
    context: ServiceContext, *, max_results: int | None = None, next_token: str | None = None
) -> dict[str, Any]:
    """Return ListReportPlans' answer, by name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(ReportPlan),
            [ReportPlan.name],
            operation="ListReportPlans",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"ReportPlans": [report_plan_to_aws(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


# --- report jobs ---------------------------------------------------------------------------------


def start_report_job(
    context: ServiceContext, report_plan_name: str, *, idempotency_token: str | None = None
) -> dict[str, Any]:
    """Run a report plan now and record the job; a retry with the same IdempotencyToken returns the job."""
    token = expect_str(idempotency_token, "IdempotencyToken") if idempotency_token is not None else None
    now = context.now()
    with context.catalog.transaction() as session:
        plan = get_report_plan_row(session, report_plan_name, for_update=True)
        if token is not None:
            earlier = session.scalars(
                select(ReportJob).where(
                    ReportJob.report_plan_name == plan.name, ReportJob.idempotency_token == token
                )
            ).first()
            if earlier is not None:
                return {"ReportJobId": earlier.id}
        job = ReportJob(
            id=_report_job_id(now),
            report_plan_name=plan.name,
            report_plan_arn=plan.arn,
            report_template=plan.report_setting["ReportTemplate"],
            creation_time=now,
            status=JOB_RUNNING,
            location_name=plan.delivery_channel["S3BucketName"],
            s3_keys=[],
            idempotency_token=token,
        )
        session.add(job)
        plan.last_attempted_execution_time = now
        job_id, plan_arn, plan_name = job.id, plan.arn, plan.name
        delivery, setting = dict(plan.delivery_channel), dict(plan.report_setting)
    keys: list[str] = []
    message: str | None = None
    try:
        keys = _run_report(context, job_id, plan_name, delivery, setting, now)
    except (BackupServiceError, StorageError, OSError, ValueError) as error:
        message = getattr(error, "message", None) or str(error)
    except Exception as error:  # recorded on the job, so it does not stay RUNNING for ever
        logger.exception("report job %s failed", job_id)
        message = f"internal error: {type(error).__name__}: {error}"
    _finish_job(context, job_id, plan_arn, keys, message)
    return {"ReportJobId": job_id}


def describe_report_job(context: ServiceContext, report_job_id: str) -> dict[str, Any]:
    """Return DescribeReportJob's answer."""
    with context.catalog.transaction() as session:
        row = session.get(ReportJob, expect_str(report_job_id, "ReportJobId"))
        if row is None:
            raise ResourceNotFoundException(f"Report job {report_job_id!r} does not exist.")
        return {"ReportJob": report_job_to_aws(session, row)}


def list_report_jobs(
    context: ServiceContext,
    *,
    by_report_plan_name: str | None = None,
    by_creation_before: datetime | None = None,
    by_creation_after: datetime | None = None,
    by_status: str | None = None,
    max_results: int | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    """Return ListReportJobs' answer, newest first."""
    statement = select(ReportJob)
    if by_report_plan_name is not None:
        statement = statement.where(
            ReportJob.report_plan_name == validate_audit_name(by_report_plan_name, "ByReportPlanName")
        )
    if by_status is not None:
        if by_status not in JOB_STATUSES:
            raise InvalidParameterValueException(
                f"ByStatus {by_status!r} is not a report job status; use {', '.join(JOB_STATUSES)}."
            )
        statement = statement.where(ReportJob.status == by_status)
    if by_creation_before is not None:
        statement = statement.where(ReportJob.creation_time < _aware(by_creation_before, "ByCreationBefore"))
    if by_creation_after is not None:
        statement = statement.where(ReportJob.creation_time > _aware(by_creation_after, "ByCreationAfter"))
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [ReportJob.id],  # ids begin with their creation time, so this is newest first
            operation="ListReportJobs",
            next_token=next_token,
            max_results=max_results,
            descending=True,
        )
        response: dict[str, Any] = {"ReportJobs": [report_job_to_aws(session, row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


# --- shapes --------------------------------------------------------------------------------------


def get_report_plan_row(session: Session, report_plan_name: str, *, for_update: bool = False) -> ReportPlan:
    """Return a report plan row (row-locked on PostgreSQL if asked), or raise ResourceNotFoundException."""
    statement = select(ReportPlan).where(ReportPlan.name == expect_str(report_plan_name, "ReportPlanName"))
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Report plan {report_plan_name!r} does not exist.")
    return row


def report_plan_to_aws(row: ReportPlan) -> dict[str, Any]:
    """Return a report plan in AWS's ReportPlan shape."""
    body: dict[str, Any] = {"ReportPlanArn": row.arn, "ReportPlanName": row.name}
    if row.description:
        body["ReportPlanDescription"] = row.description
    body.update(
        ReportSetting=dict(row.report_setting),
        ReportDeliveryChannel=dict(row.delivery_channel),
        DeploymentStatus=row.deployment_status,
        CreationTime=row.creation_time,
    )
    if row.last_attempted_execution_time is not None:
        body["LastAttemptedExecutionTime"] = row.last_attempted_execution_time
    if row.last_successful_execution_time is not None:
        body["LastSuccessfulExecutionTime"] = row.last_successful_execution_time
    return body


def report_job_to_aws(session: Session, row: ReportJob) -> dict[str, Any]:
    """Return a report job in AWS's ReportJob shape (S3Keys as the location stores them)."""
    body: dict[str, Any] = {
        "ReportJobId": row.id,
        "ReportPlanArn": row.report_plan_arn,
        "ReportTemplate": row.report_template,
        "CreationTime": row.creation_time,
    }
    if row.completion_time is not None:
        body["CompletionTime"] = row.completion_time
    body["Status"] = row.status
    if row.status_message:
        body["StatusMessage"] = row.status_message
    if row.s3_keys:
        location = session.get(StorageLocation, row.location_name)
        prefix = f"{location.prefix}/" if location is not None and location.prefix else ""
        body["ReportDestination"] = {
            "S3BucketName": row.location_name,
            "S3Keys": [prefix + key for key in row.s3_keys],
        }
    return body


# --- running a job -------------------------------------------------------------------------------


def _run_report(
    context: ServiceContext,
    job_id: str,
    plan_name: str,
    delivery: dict[str, Any],
    setting: dict[str, Any],
    now: datetime,
) -> list[str]:
    """Build the report, write every format into the storage location, and return the keys written."""
    document = build_report(context, job_id, plan_name, setting, now)
    with context.catalog.transaction() as session:
        location = get_location_row(session, delivery["S3BucketName"])
        store = open_location_store(location, location_root(location))
    prefix = f"{delivery['S3KeyPrefix']}/" if delivery.get("S3KeyPrefix") else ""
    base = (
        f"{REPORTS_ROOT}/{prefix}Backup/{context.account}/{context.default_location}/{setting['ReportTemplate']}/"
        f"{now:%Y/%m/%d}/{plan_name}_{now:%Y%m%dT%H%M%SZ}_{job_id}"
    )
    keys = []
    try:
        for report_format in [*delivery.get("Formats", DEFAULT_FORMATS), HTML]:
            key = f"{base}.{EXTENSIONS[report_format]}"
            store.put(key, render(document, report_format))
            keys.append(key)
    finally:
        store.close()
    return keys


def _finish_job(
    context: ServiceContext, job_id: str, plan_arn: str, keys: list[str], message: str | None
) -> None:
    now = context.now()
    with context.catalog.transaction() as session:
        job = session.get(ReportJob, job_id)
        if job is None:
            return
        job.status = JOB_FAILED if message else JOB_COMPLETED
        job.status_message = message
        job.completion_time = now
        job.s3_keys = keys
        plan = session.get(ReportPlan, job.report_plan_name)
        if plan is not None and message is None:
            plan.last_successful_execution_time = job.creation_time
        record_event(
            session,
            REPORT_JOB_FAILED if message else REPORT_JOB_COMPLETED,
            now,
            resource_arn=plan_arn,
            detail={"ReportJobId": job_id, "Status": job.status, "StatusMessage": message, "S3Keys": keys},
        )


def location_root(location: StorageLocation) -> str:
    """Return the URL of a storage location's root (its directory, or s3://bucket[/prefix])."""
    if location.location_type == "s3":
        return f"s3://{location.bucket}/{location.prefix}" if location.prefix else f"s3://{location.bucket}"
    return location.path or ""


def _report_job_id(now: datetime) -> str:
    """A UUID-shaped id that starts with its creation time in milliseconds, so ids sort by time."""
    raw = f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(10)}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _plan_answer(row: ReportPlan) -> dict[str, Any]:
    return {"ReportPlanName": row.name, "ReportPlanArn": row.arn, "CreationTime": row.creation_time}


def _aware(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidParameterValueException(f"{where} must be a timestamp with a time zone.")
    return value
