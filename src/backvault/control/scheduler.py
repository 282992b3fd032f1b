"""The scheduler: turns backup plans into backup jobs at their scheduled times, one leader at a time.

Leadership is a row in ``leases`` (name ``scheduler``), taken and renewed with a conditional update:
only the holder, or anyone once the holder's lease has expired, can write it. Several servers may
run a scheduler; one acts, the others wait and take over when the leader dies (its lease expires)
or stops (it releases the lease). Every write the leader makes re-checks the lease in the same
transaction, so a leader that stalled past its lease acts no more.

Each rule of each live plan keeps a mark in ``schedule_marks``: every scheduled time at or before
``evaluated_until`` has been handled. A tick handles the runs in (mark, now] and moves the mark to
now, in one transaction with the jobs it creates. So a restarted server neither repeats a run nor
loses one: a run missed while the server was down is still started if its start window
(StartWindowMinutes after the scheduled time) is open, and is skipped and recorded otherwise.
Jobs also carry an idempotency token derived from plan, rule, resource and scheduled time.

``rate()`` rules count periods from the creation of the plan's current version (the moment the rule
took its present form, as ``GetBackupPlan``'s preview does): updating a plan restarts them.

Resources are resolved at each run against the protected-resources table, kept current by
discovery, which the scheduler runs every ``discovery_interval`` and also before acting on a due run
whenever the last discovery started before that run's scheduled time. So a resource created with a
selected tag any time before a run, even seconds before it, is backed up by that run without anyone
touching the plan. An endpoint that cannot be discovered (unreachable, refused credentials) does not
hold the run up: the others' resources are resolved as usual, its known resources still get their
jobs (which fail with the connector's reason), and the failure is logged, listed in the tick's
errors and recorded once per outage as a SOURCE_ENDPOINT_DISCOVERY_FAILED event. A resource that
already has an unfinished backup job gets no second one; that run is skipped for it and recorded.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Lease
from backvault.control.catalog.models import BackupPlanVersion, ProtectedResource
from backvault.control.catalog.scheduling import ScheduleMark
from backvault.control.context import ServiceContext
from backvault.control.discovery import discover_all
from backvault.control.events import EventType, record_event
from backvault.control.frameworks import evaluate_frameworks
from backvault.control.job_engine import expire_overdue_jobs
from backvault.control.lifecycle_engine import run_lifecycle
from backvault.control.notifications import run_notifications
from backvault.control.plans import get_plan_row, load_plan
from backvault.control.schedule_runs import (
    RuleOutcome,
    RuleWork,
    create_run_jobs,
    evaluation_start,
    rule_introduced,
    rules_with_due_runs,
    runs_between,
    selected_resources,
)
from backvault.control.selections import plan_selections

logger = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
DEFAULT_DISCOVERY_INTERVAL = timedelta(minutes=15)
DEFAULT_LIFECYCLE_INTERVAL = timedelta(minutes=5)
_T = TypeVar("_T")


@dataclass
class TickResult:
    """What one scheduler tick did."""

    scheduler_id: str
    leader: bool
    jobs_created: list[str] = field(default_factory=list)
    runs_handled: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    discovery_ran: bool = False
    jobs_expired: int = 0
    lifecycle_ran: bool = False
    errors: list[str] = field(default_factory=list)


class LostLeadershipError(Exception):
    """The scheduler's lease was taken over while it was working: it must stop acting."""


class Scheduler:
    """Creates the backup jobs of every plan's rules when they are due, while it holds the lease."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        scheduler_id: str | None = None,
        lease_seconds: float = 30,
        discovery_interval: timedelta = DEFAULT_DISCOVERY_INTERVAL,
        lifecycle_interval: timedelta = DEFAULT_LIFECYCLE_INTERVAL,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.context = context
        self.scheduler_id = scheduler_id or f"scheduler-{uuid.uuid4().hex[:12]}"
        self.lease = timedelta(seconds=lease_seconds)
        self.discovery_interval = discovery_interval
        self.lifecycle_interval = lifecycle_interval
        self.is_leader = False
        self._last_discovery: datetime | None = None
        self._last_lifecycle: datetime | None = None

    # --- the loop --------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, interval_seconds: float = 5.0) -> None:
        """Tick every ``interval_seconds`` until ``stop`` is set, then give the lease up."""
        if interval_seconds * 2 > self.lease.total_seconds():
            raise ValueError(
                f"the tick interval ({interval_seconds} s) must be at most half the lease "
                f"({self.lease.total_seconds()} s), or the leader would lose its lease between ticks"
            )
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # the loop must survive a bad tick (database blip, bug in a hook)
                    logger.exception("scheduler tick failed; retrying in %s s", interval_seconds)
                stop.wait(interval_seconds)
        finally:
            self.release()

    def tick(self) -> TickResult:
        """Renew or take the lease; as leader, create due jobs and run the periodic chores."""
        result = TickResult(self.scheduler_id, self.hold_lease())
        if not result.leader:
            return result
        try:
            work = rules_with_due_runs(self.context)
            if self._discovery_due(work):
                result.discovery_ran = self._run_discovery(result)
                self._renew()  # discovery can take a while: hold on to the lease before acting on it
            for item in work:
                outcome = _guarded(
                    result, f"rule {item.rule_id} of plan {item.plan_id}", self._evaluate, item
                )
                if outcome is not None:
                    result.jobs_created.extend(outcome.jobs)
                    result.skipped.extend(outcome.skipped)
                    result.runs_handled += outcome.runs
            result.jobs_expired = _guarded(result, "expiring overdue jobs", self._expire_jobs) or 0
            if self._lifecycle_due():
                self._renew()
                result.lifecycle_ran = self._run_lifecycle(result)
            for what, chore in PERIODIC_CHORES:
                _guarded(result, what, chore, self.context)
        except LostLeadershipError:
            logger.warning("scheduler %s lost its lease mid-tick; stopping", self.scheduler_id)
            self.is_leader = result.leader = False
        return result

    # --- leadership ------------------------------------------------------------------------------

    def hold_lease(self) -> bool:
        """Take or renew the scheduler lease; True if this scheduler is the leader now."""
        now = self.context.now()
        try:
            with self.context.catalog.transaction() as session:
                row = session.scalars(select(Lease).where(Lease.name == LEASE_NAME).with_for_update()).first()
                previous: str | None = None
                if row is None:
                    session.add(
                        Lease(
                            name=LEASE_NAME,
                            owner=self.scheduler_id,
                            expires_at=now + self.lease,
                            acquired_at=now,
                        )
                    )
                    session.flush()
                elif row.owner == self.scheduler_id or row.expires_at <= now:
                    previous = row.owner
                    values: dict[str, Any] = {"owner": self.scheduler_id, "expires_at": now + self.lease}
                    if row.owner != self.scheduler_id:
                        values["acquired_at"] = now
                    # Conditional: only the holder, or anyone once the lease has expired, may write.
                    changed = session.execute(
                        update(Lease)
                        .where(
                            Lease.name == LEASE_NAME,
                            or_(Lease.owner == self.scheduler_id, Lease.expires_at <= now),
                        )
                        .values(**values)
                        .execution_options(synchronize_session=False)
                    )
                    if changed.rowcount != 1:  # type: ignore[attr-defined]
                        return self._set_leader(False)
                else:
                    return self._set_leader(False)
                if previous != self.scheduler_id:
                    record_event(
                        session,
                        EventType.SCHEDULER_LEADER_CHANGED,
                        now,
                        detail={"Leader": self.scheduler_id, "PreviousLeader": previous},
                    )
                    logger.info("scheduler %s is now the leader (previous: %s)", self.scheduler_id, previous)
        except IntegrityError:
            return self._set_leader(False)  # another scheduler created the lease row first
        return self._set_leader(True)

    def release(self) -> None:
        """Give the lease up (if held) so another scheduler can take over at once."""
        now = self.context.now()
        try:
            with self.context.catalog.transaction() as session:
                session.execute(
                    update(Lease)
                    .where(Lease.name == LEASE_NAME, Lease.owner == self.scheduler_id)
                    .values(expires_at=now)
                    .execution_options(synchronize_session=False)
                )
        except Exception:  # shutting down: a lease that is not released simply expires
            logger.warning("scheduler %s could not release its lease", self.scheduler_id, exc_info=True)
        self.is_leader = False

    def _renew(self) -> None:
        if not self.hold_lease():
            raise LostLeadershipError(self.scheduler_id)

    def _set_leader(self, leader: bool) -> bool:
        if self.is_leader and not leader:
            logger.info("scheduler %s is no longer the leader", self.scheduler_id)
        self.is_leader = leader
        return leader

    def _check_lease(self, session: Session, now: datetime) -> None:
        """Fence: raise LostLeadershipError unless this scheduler still holds an unexpired lease."""
        held = session.scalars(
            select(Lease.name).where(
                Lease.name == LEASE_NAME, Lease.owner == self.scheduler_id, Lease.expires_at > now
            )
        ).first()
        if held is None:
            raise LostLeadershipError(self.scheduler_id)

    # --- evaluating one rule ---------------------------------------------------------------------

    def _evaluate(self, item: RuleWork) -> RuleOutcome:
        """Handle a rule's runs in (mark, now] in one transaction: jobs, skips and the new mark."""
        now = self.context.now()
        outcome = RuleOutcome()
        with self.context.catalog.transaction() as session:
            self._check_lease(session, now)
            # The row lock makes a second scheduler (one that has not yet noticed it lost the lease)
            # wait and then see the moved mark, instead of handling the same runs again.
            mark = session.scalars(
                select(ScheduleMark)
                .where(ScheduleMark.plan_id == item.plan_id, ScheduleMark.rule_id == item.rule_id)
                .with_for_update()
            ).first()
            plan_row = get_plan_row(session, item.plan_id, for_update=True)
            if plan_row.deletion_date is not None or plan_row.current_version_id != item.version_id:
                return outcome  # changed since the scan: the next tick looks again
            if mark is None:
                start = rule_introduced(
                    session, item.plan_id, item.rule_id, session.get(BackupPlanVersion, item.version_id)
                )
                mark = ScheduleMark(
                    plan_id=item.plan_id, rule_id=item.rule_id, evaluated_until=start, updated_at=now
                )
                session.add(mark)
            _, plan = load_plan(session, item.plan_id, item.version_id)
            selections = plan_selections(session, item.plan_id)
            resources: list[tuple[ProtectedResource, str]] | None = None
            for scheduled in runs_between(item, evaluation_start(item, mark.evaluated_until), now):
                outcome.runs += 1
                start_by = scheduled + timedelta(minutes=item.rule.start_window_minutes)
                if start_by <= now:
                    mark.last_skipped_at = scheduled
                    outcome.skip(session, now, item, scheduled, None, "the start window had passed")
                    continue
                if resources is None:
                    resources = selected_resources(session, selections)
                created = create_run_jobs(session, self.context, item, plan, resources, scheduled, outcome)
                if created:
                    mark.last_run_at = scheduled
                    plan_row.last_execution_date = now
            mark.evaluated_until = now
            mark.updated_at = now
        return outcome

    # --- chores ----------------------------------------------------------------------------------

    def _discovery_due(self, work: list[RuleWork]) -> bool:
        last = self._last_discovery
        if last is None or self.context.now() - last >= self.discovery_interval:
            return True
        # A due run must see every resource created before its scheduled time: a discovery that
        # started before that time may have missed one (once per scheduled time, so it stays cheap).
        due = [item.first_due for item in work if item.first_due is not None]
        return bool(due) and last < min(due)

    def _run_discovery(self, result: TickResult) -> bool:
        self._last_discovery = self.context.now()
        outcome = _guarded(result, "discovery", discover_all, self.context)
        for failure in (outcome or {}).get("Errors", []):
            result.errors.append(f"discovery of endpoint {failure['EndpointName']}: {failure['Message']}")
        return True

    def _expire_jobs(self) -> int:
        return expire_overdue_jobs(self.context)

    def _lifecycle_due(self) -> bool:
        last = self._last_lifecycle
        return last is None or self.context.now() - last >= self.lifecycle_interval

    def _run_lifecycle(self, result: TickResult) -> bool:
        self._last_lifecycle = self.context.now()
        _guarded(result, "lifecycle", run_lifecycle, self.context)
        return True


# Run by the leader on every tick, after jobs and lifecycle; each is cheap when there is nothing to do.
PERIODIC_CHORES: tuple[tuple[str, Callable[[ServiceContext], Any]], ...] = (
    ("audit evaluation", evaluate_frameworks),
    ("notifications", run_notifications),  # last: delivers what the chores above recorded
)


def _guarded(result: TickResult, what: str, action: Callable[..., _T], *args: Any) -> _T | None:
    """Run one piece of a tick; a failure is logged and reported, and the rest of the tick goes on."""
    try:
        return action(*args)
    except LostLeadershipError:
        raise
    except Exception as error:
        logger.exception("scheduler: %s failed", what)
        result.errors.append(f"{what}: {error}")
        return None
