"""Claiming jobs under a lease, and the JobRun a handler holds: heartbeats, steps, fenced writes.

A worker claims a due row by writing its id into ``lease_owner`` and bumping ``attempts``; the pair
(owner, attempt) is the fencing token: every later write for that run is made only while the row still
carries that token and the lease has not expired, so a worker that stalled past its lease can never
overwrite the results of the worker that took the job over. The public names are re-exported by
``backvault.control.job_engine``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

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
    completion_message,
    end_job,
    get_job,
    record_job_event,
    retry_state,
    shown_time,
    window_message,
)
from backvault.control.logs import job_context

logger = logging.getLogger(__name__)


# --- claiming -------------------------------------------------------------------------------------


def _claimable(now: datetime, job_types: Collection[str]) -> Any:
    other = aliased(Job)
    busy_resource = exists().where(
        other.job_type == JobType.BACKUP.value,
        other.resource_arn == Job.resource_arn,
        other.state.in_(ACTIVE_STATES),
        other.id != Job.id,
    )
    waiting = and_(
        Job.state.in_(WAITING_STATES),
        Job.next_attempt_at <= now,
        or_(Job.start_by.is_(None), Job.start_by >= now),
        # Never two backups of one resource at once (the partial unique index is the last word).
        or_(Job.job_type != JobType.BACKUP.value, Job.resource_arn.is_(None), ~busy_resource),
    )
    abandoned = and_(Job.state.in_(ACTIVE_STATES), Job.lease_expires_at < now)
    return and_(Job.job_type.in_(list(job_types)), or_(waiting, abandoned))


def claim_job(
    context: ServiceContext,
    worker_id: str,
    *,
    job_types: Collection[JobType | str],
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    retry_policy: RetryPolicy | None = None,
) -> JobRun | None:
    """Claim the next due job for ``worker_id`` (or take over an abandoned one); None when nothing is due."""
    policy = retry_policy or RetryPolicy()
    types = [JobType(kind).value for kind in job_types]
    if not types:
        return None
    # A few rounds: a round may only settle an abandoned job, or lose a race on the unique index.
    for _round in range(5):
        try:
            outcome = _claim_round(context, worker_id, types, lease_seconds, policy)
        except IntegrityError:
            # Another worker started a backup of the same resource in the same instant.
            continue
        if outcome is None:
            return None
        if isinstance(outcome, JobRun):
            return outcome
    return None


def _claim_round(
    context: ServiceContext, worker_id: str, types: list[str], lease_seconds: float, policy: RetryPolicy
) -> JobRun | bool | None:
    now = context.now()
    with context.catalog.transaction() as session:
        statement = (
            select(Job)
            .where(_claimable(now, types))
            .order_by(Job.next_attempt_at, Job.creation_date)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        job = session.scalars(statement).first()
        if job is None:
            return None
        previous_owner = job.lease_owner
        taking_over = job.state in ACTIVE_STATES
        if taking_over:
            _fail_running_steps(job, now, f"The worker {previous_owner} stopped renewing its lease.")
        if job.state == JobState.ABORTING:
            end_job(session, context, job, JobState.ABORTED, "The job was stopped on request.")
            return True
        if job.complete_by is not None and job.started_date is not None and job.complete_by <= now:
            end_job(session, context, job, JobState.ABORTED, completion_message(job))
            return True
        if job.attempts >= (job.max_attempts or policy.max_attempts):
            # Only a takeover gets here (a failed attempt past the limit ends FAILED at once): the job
            # keeps losing its worker, perhaps because it kills it; stop trying.
            last = f" Last error: {job.error_message}" if job.error_message else ""
            message = f"The job failed after {job.attempts} attempts; its worker stopped heartbeating.{last}"
            end_job(session, context, job, JobState.FAILED, message)
            return True
        # Every claim is an attempt, a takeover too: a job that kills each worker it runs on must end.
        job.attempts += 1
        job.state = JobState.RUNNING.value
        job.lease_owner = worker_id
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        if job.started_date is None:
            job.started_date = now
            window = job.parameters.get(COMPLETION_WINDOW_PARAMETER)
            if window is not None:
                job.complete_by = now + timedelta(minutes=float(window))
        session.flush()
        detail: dict[str, Any] = {"Attempt": job.attempts, "WorkerId": worker_id}
        if taking_over:
            detail["TakenOverFrom"] = previous_owner
        record_job_event(session, context, job, "STARTED", **detail)
        return JobRun(
            context,
            job_id=job.id,
            job_type=JobType(job.job_type),
            attempt=job.attempts,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            complete_by=job.complete_by,
            completion_window_minutes=job.parameters.get(COMPLETION_WINDOW_PARAMETER),
        )


def _fail_running_steps(job: Job, now: datetime, error: str) -> None:
    steps = [dict(step) for step in job.steps or []]
    for step in steps:
        if step.get("Status") == "RUNNING":
            step.update(Status="FAILED", EndDate=now.isoformat(), Error=error)
    job.steps = steps


# --- a run: what the handler holds -----------------------------------------------------------------

StopReason = str
LEASE_LOST = "lease-lost"
STOP_REQUESTED = "stop-requested"
WINDOW_PASSED = "completion-window"
# Columns only the engine writes; JobRun.update() refuses them.
ENGINE_COLUMNS = frozenset(
    {
        "id",
        "job_type",
        "state",
        "lease_owner",
        "lease_expires_at",
        "attempts",
        "next_attempt_at",
        "steps",
        "creation_date",
        "started_date",
        "completion_date",
        "max_attempts",
    }
)


class JobRun:
    """One attempt of one job on one worker: the handler's handle to heartbeat, record steps and update."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        job_id: str,
        job_type: JobType,
        attempt: int,
        worker_id: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        complete_by: datetime | None = None,
        completion_window_minutes: float | None = None,
    ) -> None:
        self.context = context
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.complete_by = complete_by
        self.completion_window_minutes = completion_window_minutes
        self.stop_reason: StopReason | None = None
        self.stop_message: str | None = None
        self.stop_noticed_at: float | None = None  # time.monotonic() of the first stop reason
        # Handlers may heartbeat per chunk; the catalog is written at most this often (0: every call).
        self.min_heartbeat_seconds = 0.0
        self._pending_bytes: int | None = None
        self._last_renewal = time.monotonic()

    def __repr__(self) -> str:
        return f"JobRun({self.job_id!r}, {self.job_type}, attempt={self.attempt}, worker={self.worker_id!r})"

    def job(self) -> Job:
        """Return a fresh, detached copy of the job row."""
        with self.context.catalog.transaction() as session:
            job = get_job(session, self.job_id)
            session.expunge(job)
            return job

    def heartbeat(self, bytes_transferred: int | None = None) -> None:
        """Renew the lease and record progress; raise JobStopped when the job must stop."""
        if bytes_transferred is not None:
            self._pending_bytes = bytes_transferred
        self._raise_if_stopped()
        if time.monotonic() - self._last_renewal >= self.min_heartbeat_seconds:
            self.renew()
        self._raise_if_stopped()

    def report_bytes(self, bytes_transferred: int) -> None:
        """Set the BytesTransferred figure that every later write of the job row stores."""
        self._pending_bytes = bytes_transferred

    def renew(self) -> None:
        """Write the heartbeat now: extend the lease, store progress, notice stop requests."""
        self._last_renewal = time.monotonic()
        with self._fenced() as job:
            job.lease_expires_at = self.context.now() + timedelta(seconds=self.lease_seconds)
            if job.state == JobState.ABORTING:
                self._stop(STOP_REQUESTED, "The job was stopped on request.")
            elif job.complete_by is not None and job.complete_by <= self.context.now():
                self._stop(WINDOW_PASSED, completion_message(job))

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Record a named phase in the job's step history: RUNNING, then SUCCEEDED or FAILED."""
        with self._fenced() as job:
            step: dict[str, Any] = {
                "Name": name,
                "Status": "RUNNING",
                "StartDate": self.context.now().isoformat(),
                "Attempt": self.attempt,
            }
            job.steps = [*(job.steps or []), step]
            index = len(job.steps) - 1
        try:
            yield
        except BaseException as error:
            # The original error says more than a lost lease would.
            with suppress(JobStopped):
                self._finish_step(index, "FAILED", _describe(error))
            raise
        self._finish_step(index, "SUCCEEDED", None)

    def update(self, **fields: Any) -> None:
        """Set columns of the job row (recovery_point_arn, backup_size_in_bytes, status_message...)."""
        refused = sorted(set(fields) & ENGINE_COLUMNS)
        unknown = sorted(name for name in fields if name not in Job.__table__.columns)
        if refused or unknown:
            raise ValueError(
                f"JobRun.update() cannot set {', '.join(refused + unknown)}: "
                f"{'the engine manages these' if refused else 'no such job column'}."
            )
        with self._fenced() as job:
            for name, value in fields.items():
                setattr(job, name, value)

    # -- engine side --

    def _stop(self, reason: StopReason, message: str) -> None:
        if self.stop_reason is None or reason == LEASE_LOST:
            self.stop_reason, self.stop_message = reason, message
        if self.stop_noticed_at is None:
            self.stop_noticed_at = time.monotonic()

    def _raise_if_stopped(self) -> None:
        if self.stop_reason == LEASE_LOST:
            raise JobStopped(self.stop_message)
        if (
            self.stop_reason is None
            and self.complete_by is not None
            and self.complete_by <= self.context.now()
        ):
            self._stop(WINDOW_PASSED, window_message(self.completion_window_minutes, self.complete_by))
        if self.stop_reason is not None:
            raise JobStopped(self.stop_message)

    @contextmanager
    def _fenced(self) -> Iterator[Job]:
        """Yield the row locked for update, only while this run still holds its lease."""
        with self.context.catalog.transaction() as session:
            job = get_job(session, self.job_id, for_update=True)
            now = self.context.now()
            if job.lease_owner != self.worker_id or job.attempts != self.attempt:
                self._stop(
                    LEASE_LOST,
                    f"Worker {self.worker_id} lost the lease of job {self.job_id}: "
                    f"it is now held by {job.lease_owner or 'nobody'} ({job.state}).",
                )
            elif job.lease_expires_at is None or job.lease_expires_at <= now:
                self._stop(LEASE_LOST, f"Worker {self.worker_id}'s lease of job {self.job_id} expired.")
            if self.stop_reason == LEASE_LOST:
                raise JobStopped(self.stop_message)
            if self._pending_bytes is not None:
                job.bytes_transferred = self._pending_bytes  # progress rides along with every write
            yield job

    def _finish_step(self, index: int, status: str, error: str | None) -> None:
        with self._fenced() as job:
            steps = [dict(step) for step in job.steps or []]
            if index < len(steps):
                steps[index].update(Status=status, EndDate=self.context.now().isoformat())
                if error is not None:
                    steps[index]["Error"] = error
            job.steps = steps

    def finish(self, state: JobState, message: str | None) -> bool:
        """End the job in ``state`` if this run still holds the lease; False when it was lost."""
        try:
            with self._fenced() as job:
                with_session = _session_of(job)
                end_job(with_session, self.context, job, state, message)
        except JobStopped:
            logger.warning("job %s: not recording %s, the lease was lost", self.job_id, state.value)
            return False
        return True

    def reschedule(self, error: str, policy: RetryPolicy) -> JobState | None:
        """After a failed attempt: wait with backoff, or FAILED when out of attempts or time; None if lost."""
        try:
            with self._fenced() as job:
                session = _session_of(job)
                limit = job.max_attempts or policy.max_attempts
                job.error_message = error
                if job.attempts >= limit:
                    end_job(
                        session,
                        self.context,
                        job,
                        JobState.FAILED,
                        f"The job failed after {job.attempts} attempts: {error}",
                    )
                    return JobState.FAILED
                now = self.context.now()
                retry_at = now + policy.delay(job.attempts)
                if job.start_by is not None and retry_at > job.start_by:
                    end_job(
                        session,
                        self.context,
                        job,
                        JobState.FAILED,
                        f"Attempt {job.attempts} failed and no retry could start before the start window "
                        f"closes at {shown_time(job.start_by)}: {error}",
                    )
                    return JobState.FAILED
                job.state = retry_state(job.job_type).value
                job.lease_owner = None
                job.lease_expires_at = None
                job.next_attempt_at = retry_at
                job.status_message = (
                    f"Attempt {job.attempts} of {limit} failed: {error}; retrying at {shown_time(retry_at)}."
                )
                session.flush()
                record_job_event(
                    session,
                    self.context,
                    job,
                    "RETRYING",
                    Attempt=job.attempts,
                    NextAttemptAt=retry_at.isoformat(),
                )
                return JobState(job.state)
        except JobStopped:
            logger.warning("job %s: not scheduling a retry, the lease was lost", self.job_id)
            return None


def _session_of(job: Job) -> Session:
    session = Session.object_session(job)
    assert session is not None  # _fenced yields attached rows
    return session


def _describe(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, RetryableJobError | PermanentJobError | JobStopped) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- running a handler ------------------------------------------------------------------------------

JobHandler = Callable[[JobRun], JobResult]


def run_handler(run: JobRun, handler: JobHandler, policy: RetryPolicy) -> JobState | None:
    """Run ``handler`` and record the outcome; return the end state (None: retry scheduled or lease lost)."""
    try:
        with job_context(run.job_id):  # every log line written by the handler names the job
            result = handler(run)
    except JobStopped as stopped:
        return _stopped(run, stopped)
    except PermanentJobError as error:
        return JobState.FAILED if run.finish(JobState.FAILED, _describe(error)) else None
    except Exception as error:  # any other failure is worth another attempt
        if run.stop_reason is not None:
            return _stopped(run, JobStopped(run.stop_message))
        logger.warning("job %s attempt %d failed: %s", run.job_id, run.attempt, _describe(error))
        after = run.reschedule(_describe(error), policy)
        return after if after in TERMINAL_STATES else None
    if not isinstance(result, JobResult) or result.state not in (JobState.COMPLETED, JobState.PARTIAL):
        message = (
            f"The {run.job_type.value} handler returned {result!r}; expected JobResult(COMPLETED or PARTIAL)."
        )
        return JobState.FAILED if run.finish(JobState.FAILED, message) else None
    return result.state if run.finish(result.state, result.status_message) else None


def _stopped(run: JobRun, stopped: JobStopped) -> JobState | None:
    if run.stop_reason in (STOP_REQUESTED, WINDOW_PASSED):
        return JobState.ABORTED if run.finish(JobState.ABORTED, run.stop_message) else None
    if run.stop_reason is None:
        # The handler raised JobStopped on its own: treat it as a stop of this job.
        message = str(stopped) or "The job was stopped by its handler."
        return JobState.ABORTED if run.finish(JobState.ABORTED, message) else None
    logger.warning("job %s: %s", run.job_id, run.stop_message)
    return None
