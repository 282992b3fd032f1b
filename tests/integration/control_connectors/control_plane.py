"""A whole control plane on a SQLite catalog: vault, endpoints, a tag-selected daily plan, scheduler, worker.

The tests drive it by hand: they move the clock, tick the scheduler and let the worker run every due
job to its end, so each scenario reads as the days of an installation.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from control_helpers import ROLE, FakeClock
from source_kinds import SourceKind
from sqlalchemy import select

from backvault.control.catalog import open_catalog
from backvault.control.catalog.activity import Event, RecoveryPoint
from backvault.control.context import ServiceContext
from backvault.control.discovery import list_discovered_resources
from backvault.control.endpoints import register_source_endpoint, update_source_endpoint
from backvault.control.job_handlers import HANDLERS
from backvault.control.locations import ensure_default_location
from backvault.control.plans import create_backup_plan
from backvault.control.recovery_points import list_recovery_points_by_backup_vault
from backvault.control.scheduler import Scheduler, TickResult
from backvault.control.secrets import load_master_secret
from backvault.control.selections import create_backup_selection
from backvault.control.vaults import create_backup_vault
from backvault.control.worker import Worker

VAULT = "main"
# The plan runs every day at 05:00 UTC; day 1 is 2026-01-01.
RUN_HOUR = 5


class MovingClock:
    """A clock the test sets by hand that also runs in real time from each setting.

    Jobs then take their real duration (restore durations are not all zero), while days still
    pass in an instant.
    """

    def __init__(self, start: datetime) -> None:
        self._base = start
        self._set_at = time.monotonic()

    @property
    def current(self) -> datetime:
        """The time the clock was last set to."""
        return self._base

    @current.setter
    def current(self, value: datetime) -> None:
        self._base = value
        self._set_at = time.monotonic()

    def __call__(self) -> datetime:
        return self._base + timedelta(seconds=time.monotonic() - self._set_at)


class Installation:
    """A data directory: SQLite catalog, default location, vault "main", a scheduler and a worker."""

    def __init__(self, tmp_path: Path, *, moving_clock: bool = False) -> None:
        start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        self.clock: FakeClock | MovingClock = MovingClock(start) if moving_clock else FakeClock(start)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        self.catalog = open_catalog(None, data_dir)
        self.context = ServiceContext(
            catalog=self.catalog, master_secret=load_master_secret(data_dir), clock=self.clock
        )
        ensure_default_location(self.context, data_dir / "vaults")
        create_backup_vault(self.context, VAULT)
        self.scheduler = Scheduler(self.context, scheduler_id="test-scheduler")
        self.worker = Worker(self.context, handlers=HANDLERS, worker_id="test-worker")

    def close(self) -> None:
        """Release the catalog."""
        self.catalog.dispose()

    # --- configuration ----------------------------------------------------------------------------

    def register(self, name: str, kind: SourceKind, connection: dict[str, Any] | None = None) -> None:
        """Register the kind's endpoint under ``name`` (checked by its connector, as an operator's is)."""
        register_source_endpoint(
            self.context,
            name,
            kind.endpoint_type,
            kind.connection() if connection is None else connection,
            credentials=kind.credentials() or None,
        )

    def reconfigure(self, name: str, connection: dict[str, Any], credentials: dict[str, str]) -> None:
        """Change an endpoint's settings without checking them (a password rotated, a server moved)."""
        if credentials:
            update_source_endpoint(
                self.context, name, connection=connection, credentials=credentials, check=False
            )
        else:
            update_source_endpoint(
                self.context, name, connection=connection, clear_credentials=True, check=False
            )

    def daily_plan(self, tag_value: str) -> str:
        """A plan run daily at 05:00 UTC into vault "main", selecting resources tagged backup=tag_value."""
        plan = {
            "BackupPlanName": "daily",
            "Rules": [
                {
                    "RuleName": "nightly",
                    "TargetBackupVaultName": VAULT,
                    "ScheduleExpression": f"cron(0 {RUN_HOUR} ? * * *)",
                    "StartWindowMinutes": 60,
                    "CompletionWindowMinutes": 600,
                }
            ],
        }
        plan_id = str(create_backup_plan(self.context, plan)["BackupPlanId"])
        create_backup_selection(
            self.context,
            plan_id,
            {
                "SelectionName": "tagged",
                "IamRoleArn": ROLE,
                "ListOfTags": [
                    {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": tag_value}
                ],
            },
        )
        return plan_id

    # --- time and work ----------------------------------------------------------------------------

    def at(self, day: int, hour: int, minute: int = 0, second: int = 0) -> None:
        """Set the clock to a time of a day (day 1 is the first of January 2026)."""
        target = datetime(2026, 1, 1, hour, minute, second, tzinfo=UTC) + timedelta(days=day - 1)
        assert target >= self.clock(), "the clock only moves forward"
        self.clock.current = target

    def tick(self) -> TickResult:
        """One scheduler tick (the scheduler decides itself whether to rediscover)."""
        return self.scheduler.tick()

    def drain(self) -> int:
        """Run every due job to its end; return how many ran."""
        for count in range(50):
            if not self.worker.run_once():
                return count
        raise AssertionError("jobs kept coming")

    # --- reading the catalog ----------------------------------------------------------------------

    def resource_arn(self, endpoint_name: str, resource_name: str) -> str:
        """The ARN discovery gave a resource of an endpoint."""
        listed = list_discovered_resources(self.context, endpoint_name=endpoint_name)["Resources"]
        arns = [item["ResourceArn"] for item in listed if item["ResourceName"] == resource_name]
        assert arns, f"{resource_name!r} was not discovered behind {endpoint_name!r}: {listed}"
        return str(arns[0])

    def points(self) -> list[dict[str, Any]]:
        """The recovery points of vault "main" (ListRecoveryPointsByBackupVault)."""
        return list(list_recovery_points_by_backup_vault(self.context, VAULT)["RecoveryPoints"])

    def point_rows_of(self, resource_arn: str) -> list[tuple[str, str]]:
        """(status, status message) of every recovery point row of a resource, whatever its status."""
        with self.catalog.transaction() as session:
            rows = session.scalars(select(RecoveryPoint).where(RecoveryPoint.resource_arn == resource_arn))
            return [(row.status, row.status_message or "") for row in rows]

    def events(self, event_type: str) -> list[dict[str, Any]]:
        """The detail of every event of one type, oldest first."""
        with self.catalog.transaction() as session:
            rows = session.scalars(select(Event).where(Event.event_type == event_type).order_by(Event.id))
            return [dict(row.detail or {}) for row in rows]
