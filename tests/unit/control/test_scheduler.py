"""The scheduler on SQLite and PostgreSQL under a fake clock: due runs, restarts, windows, leadership."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from control_helpers import FakeClock, plan_document, selection_document
from sqlalchemy import select

from backvault.control.catalog import Event, Job, Lease, RecoveryPoint, SourceEndpoint
from backvault.control.catalog.scheduling import ScheduleMark
from backvault.control.context import ServiceContext
from backvault.control.endpoints import register_source_endpoint
from backvault.control.job_handlers import HANDLERS
from backvault.control.plans import create_backup_plan, delete_backup_plan, update_backup_plan
from backvault.control.schedule_runs import (
    BACKUP_RUN_SKIPPED,
    MAX_LISTED_SKIPS,
    RuleOutcome,
    RuleWork,
    run_token,
)
from backvault.control.scheduler import LEASE_NAME, Scheduler
from backvault.control.selections import (
    create_backup_selection,
    delete_backup_selection,
    list_backup_selections,
)
from backvault.control.vaults import create_backup_vault
from backvault.control.worker import Worker

ARN_PREFIX = "arn:aws:backvault:local:000000000000:filesystem:files/"
DAILY = "cron(0 5 ? * * *)"
# FakeClock starts 2025-05-01 12:00 UTC; the daily 05:00 run after that is on May 2.
MAY_2_0500 = datetime(2025, 5, 2, 5, 0, tzinfo=UTC)


def _resource(context: ServiceContext, name: str, tags: dict[str, str]) -> str:
    """Create a directory under the endpoint's root with a tags file; discovery finds it."""
    with context.catalog.transaction() as session:
        root = Path(session.get(SourceEndpoint, "files").connection["root"])  # type: ignore[union-attr]
    (root / name).mkdir()
    (root / name / ".backvault-tags").write_text("".join(f"{key} = {value}\n" for key, value in tags.items()))
    return ARN_PREFIX + name


def _setup(context: ServiceContext, root: Path, **rule: Any) -> str:
    """A vault, a daily plan selecting backup=daily, an endpoint: two tagged directories, one untagged."""
    create_backup_vault(context, "main")
    rule.setdefault("ScheduleExpression", DAILY)
    plan = create_backup_plan(
        context, plan_document(Lifecycle={"DeleteAfterDays": 35}, RecoveryPointTags={"k": "v"}, **rule)
    )
    create_backup_selection(context, plan["BackupPlanId"], selection_document())
    root.mkdir()
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    _resource(context, "alpha", {"backup": "daily"})
    _resource(context, "beta", {"backup": "daily", "team": "x"})
    _resource(context, "gamma", {"backup": "never"})
    return str(plan["BackupPlanId"])


def _jobs(context: ServiceContext) -> list[Job]:
    with context.catalog.transaction() as session:
        return list(session.scalars(select(Job).order_by(Job.creation_date, Job.resource_arn)))


def _finish_all(context: ServiceContext, state: str = "COMPLETED") -> None:
    with context.catalog.transaction() as session:
        for job in session.scalars(select(Job)):
            job.state = state


def _events(context: ServiceContext, event_type: str) -> list[Event]:
    with context.catalog.transaction() as session:
        return list(session.scalars(select(Event).where(Event.event_type == event_type).order_by(Event.id)))


def _move_to(clock: FakeClock, moment: datetime) -> None:
    clock.advance(moment - clock.current)


def test_daily_cron_creates_one_job_per_matching_resource_per_day(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    plan_id = _setup(context, tmp_path / "root")
    scheduler = Scheduler(context, scheduler_id="one")
    assert scheduler.tick().jobs_created == []  # May 1 12:00: nothing due yet

    _move_to(clock, MAY_2_0500)
    result = scheduler.tick()
    assert result.leader and len(result.jobs_created) == 2
    jobs = _jobs(context)
    assert sorted(job.resource_arn or "" for job in jobs) == [ARN_PREFIX + "alpha", ARN_PREFIX + "beta"]
    job = jobs[0]
    assert job.job_type == "BACKUP" and job.state == "CREATED"
    assert job.vault_name == "main" and job.plan_id == plan_id and job.rule_id
    assert job.start_by == MAY_2_0500 + timedelta(minutes=480)
    assert job.idempotency_token == run_token(plan_id, job.rule_id, job.resource_arn or "", MAY_2_0500)
    assert job.parameters["Lifecycle"] == {"DeleteAfterDays": 35}
    assert job.parameters["RecoveryPointTags"] == {"k": "v"}
    assert job.parameters["CompletionWindowMinutes"] == 10080
    assert job.parameters["CreatedBy"]["BackupPlanId"] == plan_id
    assert job.parameters["IamRoleArn"].endswith("AWSBackupDefaultServiceRole")
    assert job.parameters["BackupVaultArn"].endswith(":backup-vault:main")
    assert (job.recovery_point_arn or "").startswith("arn:aws:backup:local:000000000000:recovery-point:")

    clock.advance(timedelta(minutes=30))
    assert scheduler.tick().jobs_created == []  # same day: nothing twice
    _finish_all(context)
    clock.advance(timedelta(hours=12))
    assert scheduler.tick().jobs_created == []
    _move_to(clock, MAY_2_0500 + timedelta(days=1, minutes=10))
    assert len(scheduler.tick().jobs_created) == 2
    assert len(_jobs(context)) == 4
    with context.catalog.transaction() as session:
        mark = session.scalars(select(ScheduleMark)).one()
        assert mark.last_run_at == MAY_2_0500 + timedelta(days=1)


def test_restart_creates_a_missed_run_inside_its_window_and_never_repeats_one(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root")
    _move_to(clock, MAY_2_0500 + timedelta(minutes=1))
    assert len(Scheduler(context, scheduler_id="before-crash").tick().jobs_created) == 2
    _finish_all(context)
    # The server "crashes" (no release) and comes back on May 3 at 07:00: the 05:00 run is two hours
    # late but inside its 8-hour start window.
    _move_to(clock, MAY_2_0500 + timedelta(days=1, hours=2))
    restarted = Scheduler(context, scheduler_id="after-restart")
    result = restarted.tick()
    assert result.leader
    assert len(result.jobs_created) == 2
    scheduled = {job.parameters["ScheduledTime"] for job in _jobs(context)}
    assert scheduled == {MAY_2_0500.isoformat(), (MAY_2_0500 + timedelta(days=1)).isoformat()}
    # A third process restarting right after creates nothing.
    restarted.release()
    assert Scheduler(context, scheduler_id="again").tick().jobs_created == []
    assert len(_jobs(context)) == 4


def test_a_run_whose_start_window_passed_is_skipped_and_recorded(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root", StartWindowMinutes=60, CompletionWindowMinutes=180)
    scheduler = Scheduler(context, scheduler_id="one")
    scheduler.tick()
    # Down from May 1 12:00 to May 2 06:30: the 05:00 run's one-hour window closed at 06:00.
    _move_to(clock, MAY_2_0500 + timedelta(minutes=90))
    result = Scheduler(context, scheduler_id="late").tick()
    assert result.jobs_created == []
    assert [skip["ScheduledTime"] for skip in result.skipped] == [MAY_2_0500.isoformat()]
    events = _events(context, BACKUP_RUN_SKIPPED)
    assert len(events) == 1 and "start window" in events[0].detail["Reason"]
    # The next day's run is not affected.
    _move_to(clock, MAY_2_0500 + timedelta(days=1))
    assert len(Scheduler(context, scheduler_id="late").tick().jobs_created) == 2


def test_rate_schedule_counts_from_the_current_plan_version(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    plan_id = _setup(context, tmp_path / "root", ScheduleExpression="rate(12 hours)")
    created = clock.current
    scheduler = Scheduler(context, scheduler_id="one")
    clock.advance(timedelta(hours=11, minutes=59))
    assert scheduler.tick().jobs_created == []
    clock.advance(timedelta(minutes=1))
    assert len(scheduler.tick().jobs_created) == 2
    assert {job.parameters["ScheduledTime"] for job in _jobs(context)} == {
        (created + timedelta(hours=12)).isoformat()
    }
    _finish_all(context)
    # An update restarts the rate from the new version: the next run is 12 hours after it.
    clock.advance(timedelta(hours=3))
    updated_at = clock.current
    update_backup_plan(context, plan_id, plan_document(ScheduleExpression="rate(12 hours)"))
    clock.advance(timedelta(hours=9, minutes=30))  # the old anchor's run time passes
    assert scheduler.tick().jobs_created == []
    _move_to(clock, updated_at + timedelta(hours=12))
    assert len(scheduler.tick().jobs_created) == 2


def test_cron_runs_on_the_wall_clock_of_the_rule_timezone(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root", ScheduleExpressionTimezone="America/New_York")
    scheduler = Scheduler(context, scheduler_id="one")
    # 05:00 in New York in May (EDT, UTC-4) is 09:00 UTC.
    _move_to(clock, datetime(2025, 5, 2, 8, 59, tzinfo=UTC))
    assert scheduler.tick().jobs_created == []
    clock.advance(timedelta(minutes=1))
    assert len(scheduler.tick().jobs_created) == 2
    expected = datetime(2025, 5, 2, 9, 0, tzinfo=UTC)
    assert all(job.start_by == expected + timedelta(minutes=480) for job in _jobs(context))


def test_one_leader_at_a_time_and_takeover_after_expiry(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root")
    first = Scheduler(context, scheduler_id="first", lease_seconds=30)
    second = Scheduler(context, scheduler_id="second", lease_seconds=30)
    assert first.tick().leader
    assert not second.tick().leader
    clock.advance(timedelta(seconds=20))
    assert first.tick().leader  # renewed
    clock.advance(timedelta(seconds=20))
    assert not second.tick().leader  # the renewal still holds
    # The leader dies: once its lease expires, the other takes over.
    clock.advance(timedelta(seconds=31))
    assert second.tick().leader
    assert not first.tick().leader
    changes = _events(context, "SCHEDULER_LEADER_CHANGED")
    assert [(e.detail["Leader"], e.detail["PreviousLeader"]) for e in changes] == [
        ("first", None),
        ("second", "first"),
    ]
    # Releasing hands over at once.
    second.release()
    assert first.tick().leader
    with context.catalog.transaction() as session:
        assert session.get(Lease, LEASE_NAME).owner == "first"  # type: ignore[union-attr]


def test_a_leader_that_stalls_past_its_lease_creates_nothing(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root")
    other = Scheduler(context, scheduler_id="other", lease_seconds=30)

    class Stalling(Scheduler):
        def _evaluate(self, item: RuleWork) -> RuleOutcome:
            # Between taking the lease and creating jobs, this leader stalls and the other takes over.
            clock.advance(timedelta(seconds=31))
            assert other.hold_lease()
            return super()._evaluate(item)

    _move_to(clock, MAY_2_0500)
    result = Stalling(context, scheduler_id="stalling", lease_seconds=30).tick()
    assert not result.leader and result.jobs_created == []
    assert _jobs(context) == []
    assert len(other.tick().jobs_created) == 2


def test_a_newly_tagged_resource_is_picked_up_on_the_next_run(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root")
    scheduler = Scheduler(context, scheduler_id="one")
    _move_to(clock, MAY_2_0500)
    assert len(scheduler.tick().jobs_created) == 2
    _finish_all(context)
    clock.advance(timedelta(hours=3))
    _resource(context, "delta", {"backup": "daily"})  # created later, with the selected tag
    assert scheduler.tick().jobs_created == []  # not before its run
    _move_to(clock, MAY_2_0500 + timedelta(days=1))
    scheduler.tick()
    arns = [
        job.resource_arn
        for job in _jobs(context)
        if job.parameters["ScheduledTime"] != MAY_2_0500.isoformat()
    ]
    assert sorted(arns) == [ARN_PREFIX + "alpha", ARN_PREFIX + "beta", ARN_PREFIX + "delta"]  # type: ignore[type-var]
    # A directory that disappears is no longer scheduled (discovery marks it vanished).
    _finish_all(context)
    shutil.rmtree(tmp_path / "root" / "beta")
    _move_to(clock, MAY_2_0500 + timedelta(days=2))
    created = scheduler.tick().jobs_created
    with context.catalog.transaction() as session:
        arns = [session.get(Job, job_id).resource_arn for job_id in created]  # type: ignore[union-attr]
    assert sorted(arns) == [ARN_PREFIX + "alpha", ARN_PREFIX + "delta"]  # type: ignore[type-var]


def test_no_second_job_while_one_is_not_terminal(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root", ScheduleExpression="cron(0 * ? * * *)")  # hourly
    scheduler = Scheduler(context, scheduler_id="one")
    _move_to(clock, MAY_2_0500)
    assert len(scheduler.tick().jobs_created) == 2
    with context.catalog.transaction() as session:  # alpha's job runs long; beta's finished
        for job in session.scalars(select(Job)):
            job.state = "RUNNING" if job.resource_arn == ARN_PREFIX + "alpha" else "COMPLETED"
            job.lease_expires_at = clock.current + timedelta(days=1)
    clock.advance(timedelta(hours=1))
    result = scheduler.tick()
    assert [job.resource_arn for job in _jobs(context)[2:]] == [ARN_PREFIX + "beta"]
    assert len(result.jobs_created) == 1
    assert [(s["ResourceArn"], s["Reason"]) for s in result.skipped] == [
        (ARN_PREFIX + "alpha", "a backup job of it is still running")
    ]


def test_a_catch_up_after_hours_down_creates_one_job_per_resource(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root", ScheduleExpression="cron(0 * ? * * *)")  # hourly, 8-hour start window
    scheduler = Scheduler(context, scheduler_id="one")
    scheduler.tick()
    clock.advance(timedelta(hours=3, minutes=5))  # three runs missed, all inside their windows
    result = scheduler.tick()
    assert result.runs_handled == 3
    assert len(result.jobs_created) == 2  # not three backups of the same resource queued up


def test_a_deleted_plan_or_selection_schedules_nothing(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    plan_id = _setup(context, tmp_path / "root")
    selection_id = list_backup_selections(context, plan_id)["BackupSelectionsList"][0]["SelectionId"]
    delete_backup_selection(context, plan_id, selection_id)
    scheduler = Scheduler(context, scheduler_id="one")
    _move_to(clock, MAY_2_0500)
    assert scheduler.tick().jobs_created == []
    delete_backup_plan(context, plan_id)
    _move_to(clock, MAY_2_0500 + timedelta(days=1))
    result = scheduler.tick()
    assert result.jobs_created == [] and result.errors == []


def test_a_scheduled_job_runs_to_a_recovery_point_with_the_rule_settings(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root")
    (tmp_path / "root" / "alpha" / "file.txt").write_bytes(b"scheduled bytes")
    _move_to(clock, MAY_2_0500)
    Scheduler(context, scheduler_id="one").tick()
    worker = Worker(context, handlers=HANDLERS, lease_seconds=30)
    assert worker.run_once() and worker.run_once()
    jobs = _jobs(context)
    assert [job.state for job in jobs] == ["COMPLETED", "COMPLETED"], [job.status_message for job in jobs]
    with context.catalog.transaction() as session:
        point = session.scalars(
            select(RecoveryPoint).where(RecoveryPoint.resource_arn == ARN_PREFIX + "alpha")
        ).one()
        assert point.arn == next(
            job.recovery_point_arn for job in jobs if job.resource_arn == point.resource_arn
        )
        assert point.plan_id == jobs[0].plan_id and point.rule_id == jobs[0].rule_id
        assert point.delete_at == point.creation_date + timedelta(days=35)
        assert point.tags.get("k") == "v"


def _contend(scheduler: Scheduler, barrier: threading.Barrier, outcomes: dict[str, bool]) -> None:
    barrier.wait()
    outcomes[scheduler.scheduler_id] = scheduler.hold_lease()


def test_schedulers_racing_for_the_lease_elect_exactly_one(context: ServiceContext, clock: FakeClock) -> None:
    contenders = [Scheduler(context, scheduler_id=f"s{number}") for number in range(4)]
    for round_number in range(3):  # an empty lease table, then twice an expired lease
        barrier = threading.Barrier(len(contenders))
        outcomes: dict[str, bool] = {}
        threads = [
            threading.Thread(target=_contend, args=(scheduler, barrier, outcomes)) for scheduler in contenders
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(outcomes.values()) == 1, (round_number, outcomes)
        clock.advance(timedelta(seconds=31))


def test_a_long_outage_lists_a_bounded_number_of_lapsed_runs(
    context: ServiceContext, clock: FakeClock, tmp_path: Path
) -> None:
    _setup(context, tmp_path / "root", ScheduleExpression="cron(0 * ? * * *)", StartWindowMinutes=60)
    scheduler = Scheduler(context, scheduler_id="one")
    scheduler.tick()
    clock.advance(timedelta(days=30, minutes=30))  # 720 hourly runs; only the last one's window is open
    result = scheduler.tick()
    assert len(result.jobs_created) == 2
    assert len(result.skipped) == MAX_LISTED_SKIPS + 1  # the first ones, then the last lapsed run
    last_lapsed = clock.current.replace(minute=0) - timedelta(hours=1)
    assert result.skipped[-1]["ScheduledTime"] == last_lapsed.isoformat()
    assert all(job.start_by == last_lapsed + timedelta(hours=2) for job in _jobs(context))
