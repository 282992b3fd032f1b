"""Workers on SQLite and PostgreSQL: running jobs, keeping leases alive, polling, the process entry."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from sqlalchemy import select

from backvault.control.catalog import Catalog
from backvault.control.catalog.activity import Job, JobType
from backvault.control.context import ServiceContext
from backvault.control.job_engine import (
    JobResult,
    JobRun,
    JobState,
    RetryableJobError,
    RetryPolicy,
    claim_job,
    create_job,
    request_stop,
)
from backvault.control.secrets import MasterSecret
from backvault.control.worker import Worker, default_worker_id, run_worker_process

RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/"


def add_jobs(
    context: ServiceContext, count: int, job_type: JobType = JobType.BACKUP, **fields: object
) -> list[str]:
    """Create ``count`` jobs on distinct resources and return their ids."""
    with context.catalog.transaction() as session:
        return [
            create_job(session, context, job_type, resource_arn=f"{RESOURCE}{number}", **fields).id  # type: ignore[arg-type]
            for number in range(count)
        ]


def states(context: ServiceContext) -> dict[str, str]:
    """Return every job's state by id."""
    with context.catalog.transaction() as session:
        return {job.id: job.state for job in session.scalars(select(Job))}


def completes(run: JobRun) -> JobResult:
    """A handler with one step that completes."""
    with run.step("backup"):
        run.heartbeat(1)
    return JobResult()


@pytest.fixture
def real_clock_context(catalog: Catalog, master_secret: MasterSecret) -> ServiceContext:
    """A context on the system clock: lease renewal by the background thread is about real time."""
    return ServiceContext(catalog=catalog, master_secret=master_secret)


def test_run_once_runs_one_due_job(context: ServiceContext) -> None:
    first, second = add_jobs(context, 2)
    worker = Worker(context, worker_id="w1", handlers={JobType.BACKUP: completes})
    assert worker.run_once() is True
    assert worker.run_once() is True
    assert worker.run_once() is False
    assert states(context) == {first: "COMPLETED", second: "COMPLETED"}


def test_a_worker_claims_only_job_types_it_can_handle(context: ServiceContext) -> None:
    (restore,) = add_jobs(context, 1, JobType.RESTORE)
    (backup,) = add_jobs(context, 1)
    only_backups = Worker(
        context, handlers={JobType.BACKUP: completes, JobType.RESTORE: completes}, job_types=[JobType.BACKUP]
    )
    assert only_backups.claimable_types() == [JobType.BACKUP]
    assert only_backups.run_once() and not only_backups.run_once()
    no_restore_handler = Worker(context, handlers={JobType.BACKUP: completes})
    assert not no_restore_handler.run_once()
    assert states(context) == {restore: "PENDING", backup: "COMPLETED"}


def test_run_once_expires_overdue_jobs_first(context: ServiceContext, clock: FakeClock) -> None:
    (job_id,) = add_jobs(context, 1, start_by=clock.current + timedelta(minutes=60))
    clock.advance(timedelta(minutes=61))
    assert Worker(context, handlers={JobType.BACKUP: completes}).run_once() is False
    assert states(context) == {job_id: "EXPIRED"}


def test_a_failing_handler_is_retried_by_the_worker(context: ServiceContext, clock: FakeClock) -> None:
    (job_id,) = add_jobs(context, 1)
    calls: list[int] = []

    def flaky(run: JobRun) -> JobResult:
        calls.append(run.attempt)
        if run.attempt == 1:
            raise RetryableJobError("not yet")
        return JobResult()

    worker = Worker(context, handlers={JobType.BACKUP: flaky}, retry_policy=RetryPolicy(base_delay_seconds=5))
    assert worker.run_once() and states(context) == {job_id: "PENDING"}
    assert not worker.run_once()
    clock.advance(timedelta(seconds=5))
    assert worker.run_once() and states(context) == {job_id: "COMPLETED"}
    assert calls == [1, 2]


def test_the_lease_is_kept_alive_while_a_handler_is_stuck(real_clock_context: ServiceContext) -> None:
    context = real_clock_context
    (job_id,) = add_jobs(context, 1)
    seen: dict[str, object] = {}

    def stuck_in_a_long_read(run: JobRun) -> JobResult:
        time.sleep(1.6)  # no heartbeat from the handler: only the background thread renews
        seen["rival"] = claim_job(context, "rival", job_types=[JobType.BACKUP], lease_seconds=0.6)
        seen["lease"] = run.job().lease_expires_at
        seen["now"] = context.now()
        return JobResult()

    worker = Worker(
        context, worker_id="keeper", handlers={JobType.BACKUP: stuck_in_a_long_read}, lease_seconds=0.6
    )
    assert worker.run_once()
    assert seen["rival"] is None, "the lease never lapsed, so no other worker could take the job"
    assert seen["lease"] > seen["now"]  # type: ignore[operator]
    assert states(context) == {job_id: "COMPLETED"}


def test_without_renewal_a_stalled_job_is_taken_over(real_clock_context: ServiceContext) -> None:
    context = real_clock_context
    (job_id,) = add_jobs(context, 1)
    stalled = claim_job(context, "stalled", job_types=[JobType.BACKUP], lease_seconds=0.3)
    assert stalled is not None
    time.sleep(0.4)
    worker = Worker(context, worker_id="rescuer", handlers={JobType.BACKUP: completes}, lease_seconds=5)
    assert worker.run_once()
    assert states(context) == {job_id: "COMPLETED"}
    assert stalled.finish(JobState.COMPLETED, "late") is False, "fenced out after the takeover"


def test_run_forever_drains_jobs_until_stopped(context: ServiceContext) -> None:
    job_ids = add_jobs(context, 5)
    stop = threading.Event()
    worker = Worker(context, handlers={JobType.BACKUP: completes}, poll_seconds=0.05)
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while any(state != "COMPLETED" for state in states(context).values()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert states(context) == dict.fromkeys(job_ids, "COMPLETED")


def test_run_worker_process_runs_several_workers(
    database_url: str | None, data_dir: Path, context: ServiceContext
) -> None:
    job_ids = add_jobs(context, 12)
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def recorded(run: JobRun) -> JobResult:
        with lock:
            ran.append((run.job_id, run.worker_id))
        time.sleep(0.02)
        return JobResult()

    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker_process,
        args=(data_dir, database_url),
        kwargs={
            "worker_count": 3,
            "stop_event": stop,
            "handlers": {JobType.BACKUP: recorded},
            "poll_seconds": 0.05,
            "worker_id_prefix": "host:1",
        },
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(ran) < len(job_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert sorted(job_id for job_id, _ in ran) == sorted(job_ids), "every job ran exactly once"
    assert {worker for _, worker in ran} <= {"host:1/0", "host:1/1", "host:1/2"}
    # The workers ran on the real clock, in the future of the fake one: read states without it.
    with context.catalog.transaction() as session:
        assert {job.state for job in session.scalars(select(Job))} == {"COMPLETED"}


def test_bad_worker_settings_are_refused(context: ServiceContext, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Worker(context, handlers={}, lease_seconds=0)
    with pytest.raises(ValueError, match="worker_count"):
        run_worker_process(data_dir, None, worker_count=0, handlers={})
    assert default_worker_id() != default_worker_id()


def test_a_handler_that_ignores_a_stop_loses_its_lease_and_the_job_ends_aborted(
    real_clock_context: ServiceContext,
) -> None:
    context = real_clock_context
    (job_id,) = add_jobs(context, 1)
    release = threading.Event()

    def deaf(run: JobRun) -> JobResult:
        release.wait(10)  # never heartbeats, never notices the stop
        return JobResult(status_message="finished anyway")

    worker = Worker(context, worker_id="deaf", handlers={JobType.BACKUP: deaf}, lease_seconds=0.6)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while states(context)[job_id] != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.02)
        with context.catalog.transaction() as session:
            request_stop(session, context, job_id)
        while states(context)[job_id] != "ABORTED" and time.monotonic() < deadline:
            assert claim_job(context, "rival", job_types=[JobType.BACKUP]) is None, "never run again"
            time.sleep(0.05)
    finally:
        release.set()
        thread.join(timeout=10)
    with context.catalog.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.status_message, job.attempts) == (
            "ABORTED",
            "The job was stopped on request.",
            1,
        )
