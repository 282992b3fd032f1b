"""The job engine's vocabulary: AWS job states, the handler-facing errors, retry policy, and row helpers.

The public names are re-exported by ``backvault.control.job_engine``; import them from there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.domain.errors import ResourceNotFoundException


class JobState(StrEnum):
    """AWS Backup's job states (BackupJob's; restore and copy jobs use a subset)."""

    CREATED = "CREATED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    ABORTING = "ABORTING"
    ABORTED = "ABORTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    PARTIAL = "PARTIAL"


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.ABORTED, JobState.COMPLETED, JobState.FAILED, JobState.EXPIRED, JobState.PARTIAL}
)
# Waiting for a worker / held by one under a lease.
WAITING_STATES = (JobState.CREATED.value, JobState.PENDING.value)
ACTIVE_STATES = (JobState.RUNNING.value, JobState.ABORTING.value)
# The job parameter holding the completion window; complete_by is computed from it when the job starts.
COMPLETION_WINDOW_PARAMETER = "CompletionWindowMinutes"
DEFAULT_LEASE_SECONDS = 60.0


class JobStopped(Exception):
    """Raised by JobRun.heartbeat(): stop requested, completion window passed, or lease lost."""


class RetryableJobError(Exception):
    """A handler's way to say: this attempt failed, try again later (with backoff)."""


class PermanentJobError(Exception):
    """A handler's way to say: fail now, do not retry; the message becomes the StatusMessage."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed job is tried again."""

    max_attempts: int = 3
    base_delay_seconds: float = 60
    max_delay_seconds: float = 3600

    def delay(self, attempt: int) -> timedelta:
        """Return the wait after failed attempt ``attempt`` (1-based): exponential, capped, with jitter."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** max(attempt - 1, 0))
        # "Equal jitter": at least half the exponential delay, so retries spread out but still back off.
        return timedelta(seconds=ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass
class JobResult:
    """What a handler returns when its job ran to the end."""

    state: JobState = JobState.COMPLETED
    status_message: str | None = None


def initial_state(job_type: JobType) -> JobState:
    """The state a new job starts in: PENDING for restores, CREATED for backups and copies (as in AWS)."""
    return JobState.PENDING if job_type == JobType.RESTORE else JobState.CREATED


def retry_state(job_type: JobType | str) -> JobState:
    """The state a job waits for its retry in (CopyJob has no PENDING in AWS, so copies use CREATED)."""
    return JobState.CREATED if job_type == JobType.COPY else JobState.PENDING


def record_job_event(
    session: Session, context: ServiceContext, job: Job, outcome: str, **detail: Any
) -> None:
    """Record ``<TYPE>_JOB_<OUTCOME>`` for a job (the AWS name where events.py has one)."""
    name = f"{job.job_type}_JOB_{outcome}"
    event_type: EventType | str = EventType(name) if name in EventType.__members__ else name
    body = {"State": job.state, "JobType": job.job_type, **detail}
    if job.status_message:
        body.setdefault("StatusMessage", job.status_message)
    record_event(
        session,
        event_type,
        context.now(),
        resource_arn=job.resource_arn,
        vault_name=job.vault_name,
        job_id=job.id,
        detail=body,
    )


def end_job(
    session: Session, context: ServiceContext, job: Job, state: JobState, message: str | None
) -> None:
    """Move a job to a terminal state, drop its lease and record the event."""
    job.state = state.value
    job.status_message = message
    job.completion_date = context.now()
    job.lease_owner = None
    job.lease_expires_at = None
    job.next_attempt_at = None
    if state == JobState.FAILED and message:
        job.error_message = message
    session.flush()
    if state == JobState.COMPLETED:
        record_job_event(session, context, job, "COMPLETED")
        record_job_event(session, context, job, "SUCCESSFUL")
    elif state == JobState.PARTIAL:
        record_job_event(session, context, job, "COMPLETED")
    else:
        record_job_event(session, context, job, state.value)


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> Job:
    """Return a job row, or raise ResourceNotFoundException."""
    statement = select(Job).where(Job.id == job_id)
    if for_update:
        statement = statement.with_for_update()
    job = session.scalars(statement.execution_options(populate_existing=True)).first()
    if job is None:
        raise ResourceNotFoundException(f"No job with id {job_id!r}; check the id (list jobs to see them).")
    return job


def shown_time(moment: datetime | None) -> str:
    """Format an instant for a StatusMessage."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else "an unknown time"


def completion_message(job: Job) -> str:
    """The StatusMessage of a job stopped by its completion window."""
    return window_message(job.parameters.get(COMPLETION_WINDOW_PARAMETER), job.complete_by)


def window_message(window: Any, complete_by: datetime | None) -> str:
    """The completion-window StatusMessage from the window (minutes) and the deadline."""
    amount = f" of {float(window):g} minutes" if window is not None else ""
    return (
        f"The job did not complete within its completion window{amount} (complete by "
        f"{shown_time(complete_by)}) and was stopped."
    )
