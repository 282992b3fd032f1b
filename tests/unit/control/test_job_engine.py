"""The job engine on SQLite and PostgreSQL: states, claims, retries, windows, stops, fencing, exclusivity."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from control_helpers import START, FakeClock
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backvault.control.catalog.activity import Event, Job, JobType
from backvault.control.context import ServiceContext
from backvault.control.job_engine import (
    COMPLETION_WINDOW_PARAMETER,
    TERMINAL_STATES,
    JobResult,
    JobRun,
    JobState,
    JobStopped,
    PermanentJobError,
    RetryableJobError,
    RetryPolicy,
    claim_job,
    create_job,
    execution_history,
    expire_overdue_jobs,
    request_stop,
    run_handler,
)
from backvault.domain.errors import InvalidRequestException, ResourceNotFoundException

RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/home"
OTHER_RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/srv"
ALL_TYPES = (JobType.BACKUP, JobType.COPY, JobType.RESTORE)
POLICY = RetryPolicy(max_attempts=3, base_delay_seconds=60, max_delay_seconds=600)


def new_job(context: ServiceContext, job_type: JobType = JobType.BACKUP, **fields: Any) -> str:
    """Create a job in its own transaction and return its id."""
    fields.setdefault("resource_arn", RESOURCE)
    with context.catalog.transaction() as session:
        return create_job(session, context, job_type, **fields).id


def load(context: ServiceContext, job_id: str) -> Job:
    """Return the job row as committed."""
    with context.catalog.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def events_of(context: ServiceContext, job_id: str) -> list[Event]:
    """Return the job's events in order."""
    with context.catalog.transaction() as session:
        return list(session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))


def claim(context: ServiceContext, worker: str = "worker-a", lease: float = 60) -> JobRun | None:
    """Claim the next due job of any type for ``worker``."""
    return claim_job(context, worker, job_types=ALL_TYPES, lease_seconds=lease, retry_policy=POLICY)


def claimed(context: ServiceContext, worker: str = "worker-a", lease: float = 60) -> JobRun:
    """Claim and insist that a job was due."""
    run = claim(context, worker, lease)
    assert run is not None, "expected a due job"
    return run


def completes(run: JobRun) -> JobResult:
    """A handler that does its work in two steps and completes."""
    with run.step("backup"):
        run.heartbeat(1024)
        run.update(backup_size_in_bytes=4096, recovery_point_arn="arn:aws:backup:local:0:recovery-point:x")
    with run.step("verify"):
        run.heartbeat()
    return JobResult(status_message="all good")


# --- creation and the happy path ---------------------------------------------------------------------


def test_new_jobs_start_in_their_aws_first_state(context: ServiceContext) -> None:
    backup = load(context, new_job(context))
    copy = load(context, new_job(context, JobType.COPY))
    restore = load(context, new_job(context, JobType.RESTORE))
    assert (backup.state, copy.state, restore.state) == ("CREATED", "CREATED", "PENDING")
    assert backup.next_attempt_at == START and backup.attempts == 0
    assert backup.id != copy.id and len(backup.id) == 36


def test_complete_by_is_kept_as_a_window_measured_from_the_start(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context, complete_by=START + timedelta(minutes=90))
    assert load(context, job_id).parameters[COMPLETION_WINDOW_PARAMETER] == 90
    clock.advance(timedelta(minutes=30))
    run = claimed(context)
    assert run.complete_by == START + timedelta(minutes=120)
    assert load(context, job_id).complete_by == START + timedelta(minutes=120)


def test_a_claimed_job_runs_to_completion_with_steps_and_events(context: ServiceContext) -> None:
    job_id = new_job(context, vault_name="main")
    run = claimed(context)
    assert (run.job_id, run.job_type, run.attempt, run.worker_id) == (job_id, JobType.BACKUP, 1, "worker-a")
    running = load(context, job_id)
    assert running.state == "RUNNING" and running.lease_owner == "worker-a"
    assert running.lease_expires_at == START + timedelta(seconds=60) and running.started_date == START
    assert claim(context, "worker-b") is None, "a running job is not claimed twice"

    assert run_handler(run, completes, POLICY) == JobState.COMPLETED
    done = load(context, job_id)
    assert (done.state, done.status_message, done.lease_owner) == ("COMPLETED", "all good", None)
    assert done.bytes_transferred == 1024 and done.backup_size_in_bytes == 4096
    assert done.recovery_point_arn == "arn:aws:backup:local:0:recovery-point:x"
    assert [(step["Name"], step["Status"]) for step in done.steps] == [
        ("backup", "SUCCEEDED"),
        ("verify", "SUCCEEDED"),
    ]
    kinds = [event.event_type for event in events_of(context, job_id)]
    assert kinds == ["BACKUP_JOB_STARTED", "BACKUP_JOB_COMPLETED", "BACKUP_JOB_SUCCESSFUL"]
    assert claim(context) is None


def test_partial_results_and_handler_mistakes(context: ServiceContext) -> None:
    partial_id = new_job(context)
    assert run_handler(claimed(context), lambda run: JobResult(JobState.PARTIAL, "2 files skipped"), POLICY)
    assert (load(context, partial_id).state, load(context, partial_id).status_message) == (
        "PARTIAL",
        "2 files skipped",
    )
    wrong_id = new_job(context, resource_arn=OTHER_RESOURCE)
    assert run_handler(claimed(context), lambda run: None, POLICY) == JobState.FAILED  # type: ignore[arg-type,return-value]
    assert "expected JobResult" in (load(context, wrong_id).status_message or "")


def test_update_refuses_engine_columns(context: ServiceContext) -> None:
    new_job(context)
    run = claimed(context)
    with pytest.raises(ValueError, match="state"):
        run.update(state="COMPLETED")
    with pytest.raises(ValueError, match="no such job column"):
        run.update(colour="blue")


def test_jobs_are_claimed_only_when_due_and_of_a_claimed_type(
    context: ServiceContext, clock: FakeClock
) -> None:
    restore_id = new_job(context, JobType.RESTORE)
    assert claim_job(context, "w", job_types=[JobType.BACKUP, JobType.COPY]) is None
    assert claim_job(context, "w", job_types=[]) is None
    with context.catalog.transaction() as session:
        session.execute(update(Job).values(next_attempt_at=START + timedelta(minutes=5)))
    assert claim(context) is None
    clock.advance(timedelta(minutes=5))
    assert claimed(context).job_id == restore_id


def test_execution_history_reads_like_step_functions(context: ServiceContext) -> None:
    job_id = new_job(context)

    def fails_verification(run: JobRun) -> JobResult:
        with run.step("backup"):
            pass
        with run.step("verify"):
            raise PermanentJobError("checksum mismatch in pack 3f")
        return JobResult()

    run_handler(claimed(context), fails_verification, POLICY)
    history = execution_history(load(context, job_id))["events"]
    assert [event["type"] for event in history] == [
        "ExecutionStarted",
        "TaskStateEntered",
        "TaskSucceeded",
        "TaskStateExited",
        "TaskStateEntered",
        "TaskFailed",
        "ExecutionFailed",
    ]
    assert [event["id"] for event in history] == list(range(1, 8))
    assert [event["previousEventId"] for event in history] == list(range(7))
    assert history[4]["stateEnteredEventDetails"] == {"name": "verify"}
    assert history[5]["taskFailedEventDetails"]["cause"] == "checksum mismatch in pack 3f"
    assert all(event["timestamp"] == START for event in history)


# --- retries -----------------------------------------------------------------------------------------


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(base_delay_seconds=10, max_delay_seconds=100)
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)):
        delays = {policy.delay(attempt).total_seconds() for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempt, delays)
        assert len(delays) > 1, "jitter spreads the retries"


def test_failing_attempts_back_off_then_fail_for_good(context: ServiceContext, clock: FakeClock) -> None:
    job_id = new_job(context)
    failures = iter([RetryableJobError("endpoint unreachable"), OSError("disk full"), RuntimeError("boom")])

    def flaky(run: JobRun) -> JobResult:
        with run.step("backup"):
            raise next(failures)

    for attempt, delay_ceiling in ((1, 60), (2, 120)):
        assert run_handler(claimed(context), flaky, POLICY) is None
        waiting = load(context, job_id)
        assert waiting.state == "PENDING" and waiting.attempts == attempt and waiting.lease_owner is None
        assert waiting.next_attempt_at is not None
        delay = waiting.next_attempt_at - clock.current
        assert timedelta(seconds=delay_ceiling / 2) <= delay <= timedelta(seconds=delay_ceiling)
        assert f"Attempt {attempt} of 3 failed" in (waiting.status_message or "")
        assert claim(context) is None, "not due before its backoff"
        clock.current = waiting.next_attempt_at
    assert run_handler(claimed(context), flaky, POLICY) == JobState.FAILED
    failed = load(context, job_id)
    assert failed.state == "FAILED" and failed.attempts == 3
    assert failed.status_message == "The job failed after 3 attempts: RuntimeError: boom"
    assert [step["Status"] for step in failed.steps] == ["FAILED"] * 3
    kinds = [event.event_type for event in events_of(context, job_id)]
    assert kinds.count("BACKUP_JOB_RETRYING") == 2 and kinds[-1] == "BACKUP_JOB_FAILED"
    assert kinds.count("BACKUP_JOB_STARTED") == 3


def test_a_copy_waits_for_its_retry_in_created_and_max_attempts_is_per_job(context: ServiceContext) -> None:
    copy_id = new_job(context, JobType.COPY, max_attempts=2)

    def unreachable(run: JobRun) -> JobResult:
        raise RetryableJobError("destination unreachable")

    run_handler(claimed(context), unreachable, POLICY)
    assert load(context, copy_id).state == "CREATED"
    with pytest.raises(InvalidRequestException, match="max_attempts"):
        new_job(context, max_attempts=0)


def test_a_permanent_error_fails_at_once(context: ServiceContext) -> None:
    job_id = new_job(context)

    def refused(run: JobRun) -> JobResult:
        raise PermanentJobError("The resource no longer exists.")

    assert run_handler(claimed(context), refused, POLICY) == JobState.FAILED
    job = load(context, job_id)
    assert (job.state, job.attempts, job.status_message) == ("FAILED", 1, "The resource no longer exists.")


def test_no_retry_when_it_could_not_start_within_the_start_window(context: ServiceContext) -> None:
    job_id = new_job(context, start_by=START + timedelta(seconds=20))

    def flaky(run: JobRun) -> JobResult:
        raise RetryableJobError("busy")

    assert run_handler(claimed(context), flaky, POLICY) == JobState.FAILED
    message = load(context, job_id).status_message or ""
    assert "no retry could start before the start window" in message and "busy" in message


# --- windows -----------------------------------------------------------------------------------------


def test_jobs_not_started_within_their_start_window_expire(context: ServiceContext, clock: FakeClock) -> None:
    backup_id = new_job(context, start_by=START + timedelta(hours=1))
    restore_id = new_job(context, JobType.RESTORE, start_by=START + timedelta(hours=1))
    later_id = new_job(context, resource_arn=OTHER_RESOURCE, start_by=START + timedelta(hours=8))
    assert expire_overdue_jobs(context) == 0
    clock.advance(timedelta(hours=2))
    assert expire_overdue_jobs(context) == 2
    expired = load(context, backup_id)
    assert expired.state == "EXPIRED" and expired.completion_date == clock.current
    assert "did not start before its start window closed" in (expired.status_message or "")
    assert load(context, restore_id).state == "FAILED"  # restore jobs have no EXPIRED state
    assert events_of(context, backup_id)[-1].event_type == "BACKUP_JOB_EXPIRED"
    assert claimed(context).job_id == later_id
    assert expire_overdue_jobs(context) == 0


def test_an_overdue_job_is_never_claimed_even_before_the_sweep(
    context: ServiceContext, clock: FakeClock
) -> None:
    new_job(context, start_by=START + timedelta(minutes=1))
    clock.advance(timedelta(minutes=2))
    assert claim(context) is None


def test_a_retry_left_waiting_past_the_start_window_fails(context: ServiceContext, clock: FakeClock) -> None:
    job_id = new_job(context, start_by=START + timedelta(hours=1))
    run_handler(claimed(context), lambda run: (_ for _ in ()).throw(RetryableJobError("flaky")), POLICY)
    clock.advance(timedelta(hours=2))
    assert expire_overdue_jobs(context) == 1
    job = load(context, job_id)
    assert job.state == "FAILED" and "Last error: flaky" in (job.status_message or "")


def test_a_job_overrunning_its_completion_window_is_aborted(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context, complete_by=START + timedelta(minutes=30))

    def slow(run: JobRun) -> JobResult:
        with run.step("backup"):
            run.heartbeat(10)
            clock.advance(timedelta(minutes=31))
            run.heartbeat(20)
        raise AssertionError("the heartbeat should have stopped the job")

    assert run_handler(claimed(context, lease=3600), slow, POLICY) == JobState.ABORTED
    job = load(context, job_id)
    assert job.state == "ABORTED" and job.attempts == 1
    assert "completion window of 30 minutes" in (job.status_message or "")
    assert job.steps[0]["Status"] == "FAILED"
    assert events_of(context, job_id)[-1].event_type == "BACKUP_JOB_ABORTED"


def test_a_job_claimed_after_its_completion_window_is_aborted_at_once(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context, complete_by=START + timedelta(minutes=30))
    run_handler(claimed(context), lambda run: (_ for _ in ()).throw(RetryableJobError("later")), POLICY)
    clock.advance(timedelta(hours=1))
    assert claim(context) is None
    assert load(context, job_id).state == "ABORTED"


# --- stopping ---------------------------------------------------------------------------------------


def test_stopping_a_waiting_job_aborts_it_at_once(context: ServiceContext) -> None:
    backup_id = new_job(context)
    restore_id = new_job(context, JobType.RESTORE)
    for job_id in (backup_id, restore_id):
        with context.catalog.transaction() as session:
            assert request_stop(session, context, job_id).state == "ABORTED"
    assert claim(context) is None
    assert [event.event_type for event in events_of(context, backup_id)] == ["BACKUP_JOB_ABORTED"]


def test_stopping_a_running_job_makes_its_heartbeat_raise(context: ServiceContext) -> None:
    job_id = new_job(context)
    run = claimed(context)
    run.heartbeat(5)
    with context.catalog.transaction() as session:
        assert request_stop(session, context, job_id).state == "ABORTING"
    with context.catalog.transaction() as session:
        assert request_stop(session, context, job_id).state == "ABORTING", "stopping twice is harmless"
    with pytest.raises(JobStopped, match="stopped on request"):
        run.heartbeat(6)
    with pytest.raises(JobStopped):
        run.heartbeat(7)  # and it keeps raising
    assert run_handler(run, lambda run: run.heartbeat() or JobResult(), POLICY) == JobState.ABORTED  # type: ignore[func-returns-value]
    job = load(context, job_id)
    assert job.state == "ABORTED" and job.bytes_transferred == 7
    with context.catalog.transaction() as session, pytest.raises(InvalidRequestException, match="ABORTED"):
        request_stop(session, context, job_id)
    with context.catalog.transaction() as session, pytest.raises(ResourceNotFoundException):
        request_stop(session, context, "no-such-job")


def test_stopping_a_job_whose_worker_vanished(context: ServiceContext, clock: FakeClock) -> None:
    first = new_job(context)
    second = new_job(context, resource_arn=OTHER_RESOURCE)
    claimed(context, "worker-a", lease=30)
    claimed(context, "worker-b", lease=30)
    with context.catalog.transaction() as session:
        request_stop(session, context, second)  # ABORTING while its lease is still valid
    clock.advance(timedelta(seconds=31))
    with context.catalog.transaction() as session:
        assert request_stop(session, context, first).state == "ABORTED", "nobody left to acknowledge"
    assert claim(context, "worker-c") is None, "an abandoned ABORTING job is settled, not run"
    assert load(context, second).state == "ABORTED"


def test_stopping_a_finished_job_is_refused(context: ServiceContext) -> None:
    job_id = new_job(context)
    run_handler(claimed(context), completes, POLICY)
    with context.catalog.transaction() as session, pytest.raises(InvalidRequestException, match="COMPLETED"):
        request_stop(session, context, job_id)
    assert JobState.COMPLETED in TERMINAL_STATES and JobState.RUNNING not in TERMINAL_STATES


# --- leases and fencing ------------------------------------------------------------------------------


def test_an_expired_lease_is_taken_over_and_the_old_worker_is_fenced_out(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context)
    old = claimed(context, "worker-a", lease=60)
    with old.step("backup"):
        old.heartbeat(100)
    step = old.step("verify")
    step.__enter__()
    clock.advance(timedelta(seconds=59))
    old.heartbeat(200)  # renewed: still its job
    clock.advance(timedelta(seconds=59))
    assert claim(context, "worker-b") is None, "the lease is still valid"
    clock.advance(timedelta(seconds=2))

    new = claimed(context, "worker-b")
    assert (new.job_id, new.attempt) == (job_id, 2)
    taken = load(context, job_id)
    assert taken.lease_owner == "worker-b" and taken.state == "RUNNING"
    assert taken.steps[1]["Status"] == "FAILED" and "worker-a" in taken.steps[1]["Error"]
    started = events_of(context, job_id)[-1]
    assert started.event_type == "BACKUP_JOB_STARTED" and started.detail["TakenOverFrom"] == "worker-a"

    # The old worker wakes up: every write it tries is refused, and it is told so.
    with pytest.raises(JobStopped, match="lost the lease"):
        old.heartbeat(999)
    with pytest.raises(JobStopped):
        old.update(status_message="overwritten by a zombie")
    assert not step.__exit__(RuntimeError, RuntimeError("zombie"), None), "the error goes on, unmasked"
    assert old.finish(JobState.COMPLETED, "zombie result") is False
    assert old.reschedule("zombie error", POLICY) is None
    assert run_handler(old, lambda run: JobResult(), POLICY) is None

    assert run_handler(new, completes, POLICY) == JobState.COMPLETED
    done = load(context, job_id)
    assert (done.state, done.status_message, done.bytes_transferred) == ("COMPLETED", "all good", 1024)
    assert done.attempts == 2


def test_an_expired_lease_fences_out_even_before_a_takeover(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context)
    run = claimed(context, lease=10)
    clock.advance(timedelta(seconds=11))
    with pytest.raises(JobStopped, match="expired"):
        run.heartbeat()
    assert run.finish(JobState.COMPLETED, None) is False
    assert load(context, job_id).state == "RUNNING"
    assert claimed(context, "worker-b").attempt == 2


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(
    context: ServiceContext, clock: FakeClock
) -> None:
    job_id = new_job(context, max_attempts=2)
    for worker in ("worker-a", "worker-b"):
        claimed(context, worker, lease=10)
        clock.advance(timedelta(seconds=11))
    assert claim(context, "worker-c") is None
    job = load(context, job_id)
    assert (
        job.state == "FAILED" and job.status_message is not None and "after 2 attempts" in job.status_message
    )


# --- one backup per resource -------------------------------------------------------------------------


def test_two_backups_of_one_resource_never_run_at_once(context: ServiceContext) -> None:
    first = new_job(context)
    second = new_job(context)
    other = new_job(context, resource_arn=OTHER_RESOURCE)
    copy = new_job(context, JobType.COPY)  # copies read recovery points, not the resource
    running = claimed(context, "worker-a")
    assert running.job_id == first
    assert {claimed(context, "worker-b").job_id, claimed(context, "worker-c").job_id} == {other, copy}
    assert claim(context, "worker-d") is None, "the second backup of the resource waits"
    run_handler(running, completes, POLICY)
    assert claimed(context, "worker-d").job_id == second


def test_the_database_refuses_two_running_backups_of_one_resource(context: ServiceContext) -> None:
    first = new_job(context)
    second = new_job(context)
    claimed(context)
    with pytest.raises(IntegrityError), context.catalog.transaction() as session:
        session.execute(update(Job).where(Job.id == second).values(state="RUNNING"))
    assert load(context, first).state == "RUNNING" and load(context, second).state == "CREATED"


def test_racing_claims_for_one_resource_settle_on_one(context: ServiceContext) -> None:
    first = new_job(context)
    second = new_job(context)
    outcome: dict[str, JobRun | None] = {}

    def rival() -> None:
        outcome["run"] = claim(context, "worker-b")

    thread = threading.Thread(target=rival)
    with context.catalog.transaction() as session:
        # Another worker is claiming the first backup right now and has not committed yet.
        session.execute(
            update(Job)
            .where(Job.id == first)
            .values(
                state="RUNNING",
                lease_owner="worker-a",
                attempts=1,
                lease_expires_at=START + timedelta(hours=1),
            )
        )
        thread.start()
        time.sleep(0.5)
        # PostgreSQL: the rival skipped the locked row, took the second and waits on the unique index;
        # SQLite: it waits for the write lock.
        assert thread.is_alive()
    thread.join(timeout=30)
    assert outcome == {"run": None}, "the rival lost the race and claimed nothing"
    assert load(context, second).state == "CREATED"
