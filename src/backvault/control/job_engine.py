"""Durable jobs: the job engine's API (creation, stops, start windows; claiming and runs re-exported).

A job is a row in ``jobs`` that moves through AWS Backup's states (BackupJob: CREATED, PENDING,
RUNNING, ABORTING, ABORTED, COMPLETED, FAILED, EXPIRED, PARTIAL; restore and copy jobs use a subset).
Workers claim due rows under a lease renewed by heartbeats (``job_runs``), handlers report through a
``JobRun``, failures are retried with backoff, and every state change is an event. This module is the
one to import: it re-exports the engine's public names from ``job_core``, ``job_runs`` and
``job_history``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType
from backvault.control.context import ServiceContext
from backvault.control.job_core import (
    ACTIVE_STATES,
    COMPLETION_WINDOW_PARAMETER,
    DEFAULT_LEASE_SECONDS,
    TERMINAL_STATES,
    WAITING_STATES,
    JobResult,
    JobState,
    JobStopped,
    PermanentJobError,
    RetryableJobError,
    RetryPolicy,
    end_job,
    get_job,
    initial_state,
    record_job_event,
    shown_time,
)
from backvault.control.job_history import execution_history
from backvault.control.job_runs import JobHandler, JobRun, claim_job, run_handler
from backvault.domain.errors import InvalidRequestException

__all__ = [
    "ACTIVE_STATES",
    "COMPLETION_WINDOW_PARAMETER",
    "DEFAULT_LEASE_SECONDS",
    "TERMINAL_STATES",
    "WAITING_STATES",
    "JobHandler",
    "JobResult",
    "JobRun",
    "JobState",
    "JobStopped",
    "PermanentJobError",
    "RetryPolicy",
    "RetryableJobError",
    "claim_job",
    "create_job",
    "execution_history",
    "expire_overdue_jobs",
    "get_job",
    "record_job_event",
    "request_stop",
    "run_handler",
]


def create_job(
    session: Session,
    context: ServiceContext,
    job_type: JobType,
    *,
    job_id: str | None = None,
    resource_arn: str | None = None,
    resource_type: str | None = None,
    vault_name: str | None = None,
    destination_vault_arn: str | None = None,
    recovery_point_arn: str | None = None,
    plan_id: str | None = None,
    plan_version_id: str | None = None,
    rule_id: str | None = None,
    parent_job_id: str | None = None,
    idempotency_token: str | None = None,
    parameters: dict[str, Any] | None = None,
    start_by: datetime | None = None,
    complete_by: datetime | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Insert a job in its first state, due now, in the caller's transaction."""
    job_type = JobType(job_type)
    now = context.now()
    document = dict(parameters or {})
    if complete_by is not None and COMPLETION_WINDOW_PARAMETER not in document:
        # AWS measures the completion window from the job's start: keep the window, not the instant.
        document[COMPLETION_WINDOW_PARAMETER] = max((complete_by - now).total_seconds(), 0) / 60
    if max_attempts is not None and max_attempts < 1:
        raise InvalidRequestException(f"max_attempts must be at least 1, got {max_attempts}.")
    job = Job(
        id=job_id or str(uuid.uuid4()).upper(),
        job_type=job_type.value,
        state=initial_state(job_type).value,
        resource_arn=resource_arn,
        resource_type=resource_type,
        vault_name=vault_name,
        destination_vault_arn=destination_vault_arn,
        recovery_point_arn=recovery_point_arn,
        plan_id=plan_id,
        plan_version_id=plan_version_id,
        rule_id=rule_id,
        parent_job_id=parent_job_id,
        idempotency_token=idempotency_token,
        parameters=document,
        creation_date=now,
        start_by=start_by,
        complete_by=complete_by,
        attempts=0,
        next_attempt_at=now,
        bytes_transferred=0,
        backup_size_in_bytes=0,
        steps=[],
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def request_stop(session: Session, context: ServiceContext, job_id: str) -> Job:
    """Stop a job: a waiting one is ABORTED at once, a running one goes ABORTING until its worker stops."""
    job = get_job(session, job_id, for_update=True)
    state = JobState(job.state)
    if state in WAITING_STATES:
        end_job(session, context, job, JobState.ABORTED, "The job was stopped on request before it started.")
    elif state == JobState.RUNNING:
        if job.lease_expires_at is not None and job.lease_expires_at <= context.now():
            # Its worker is gone (or fenced out): nobody is left to acknowledge the stop.
            end_job(session, context, job, JobState.ABORTED, "The job was stopped on request.")
        else:
            job.state = JobState.ABORTING.value
            job.status_message = "A stop was requested; waiting for the worker to stop the job."
            session.flush()
    elif state != JobState.ABORTING:
        raise InvalidRequestException(
            f"Job {job_id} is {state.value} and can no longer be stopped; only CREATED, PENDING and RUNNING "
            "jobs can."
        )
    return job


def expire_overdue_jobs(context: ServiceContext) -> int:
    """End waiting jobs whose start window closed (EXPIRED, or FAILED after an attempt); return how many."""
    now = context.now()
    with context.catalog.transaction() as session:
        statement = (
            select(Job)
            .where(Job.state.in_(WAITING_STATES), Job.start_by.is_not(None), Job.start_by < now)
            .with_for_update(skip_locked=True)
        )
        jobs = list(session.scalars(statement))
        for job in jobs:
            window = f"The job did not start before its start window closed at {shown_time(job.start_by)}."
            if job.attempts > 0:
                previous = f" Last error: {job.error_message}" if job.error_message else ""
                end_job(session, context, job, JobState.FAILED, f"{window}{previous}")
            elif job.job_type == JobType.BACKUP:
                end_job(session, context, job, JobState.EXPIRED, window)
            else:
                # Restore and copy jobs have no EXPIRED state in AWS.
                end_job(session, context, job, JobState.FAILED, window)
        return len(jobs)
