"""One scheduled run of a backup rule: which runs are due, which resources they cover, their jobs.

The scheduler (scheduler.py) decides when and under which lease these run; this module holds what a
run means, so it can be read and tested apart from leadership.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType
from backvault.control.catalog.models import BackupPlan as PlanRow
from backvault.control.catalog.models import BackupPlanVersion, BackupVault, ProtectedResource, SourceEndpoint
from backvault.control.catalog.scheduling import ScheduleMark
from backvault.control.context import ServiceContext
from backvault.control.events import record_event
from backvault.control.job_engine import COMPLETION_WINDOW_PARAMETER, TERMINAL_STATES, JobState, create_job
from backvault.domain.arn import recovery_point_arn
from backvault.domain.errors import ResourceNotFoundException
from backvault.domain.plans import BackupPlan, BackupRule
from backvault.domain.schedule import RateSchedule
from backvault.domain.selection import Selection, selection_matches

# Not an AWS event; recorded so an operator can see why a scheduled run produced no job.
BACKUP_RUN_SKIPPED = "BACKUP_RUN_SKIPPED"
# Skipped runs are listed one by one up to this many per rule and tick; beyond, only the last.
MAX_LISTED_SKIPS = 100
# Idempotency tokens are looked up this many at a time (bound parameters are limited on SQLite).
TOKEN_BATCH = 500
NON_TERMINAL_STATES = tuple(state.value for state in JobState if state not in TERMINAL_STATES)


@dataclass(frozen=True)
class RuleWork:
    """A rule with runs due: where its evaluation starts, and what its plan version says."""

    plan_id: str
    version_id: str
    rule: BackupRule
    rule_id: str
    anchor: datetime
    # The earliest scheduled time due (the scheduler rediscovers unless discovery started after it).
    first_due: datetime | None = None


@dataclass
class RuleOutcome:
    """What evaluating one rule did."""

    jobs: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0

    def skip(
        self,
        session: Session,
        now: datetime,
        item: RuleWork,
        scheduled: datetime,
        resource_arn: str | None,
        reason: str,
    ) -> None:
        """Record a run (or one resource of it) that got no job, as an event and in the tick result."""
        detail: dict[str, Any] = {
            "BackupPlanId": item.plan_id,
            "RuleId": item.rule_id,
            "RuleName": item.rule.rule_name,
            "ScheduledTime": scheduled.isoformat(),
            "Reason": reason,
        }
        if resource_arn is not None:
            detail["ResourceArn"] = resource_arn
        self.skipped.append(detail)
        record_event(session, BACKUP_RUN_SKIPPED, now, resource_arn=resource_arn, detail=detail)


def rules_with_due_runs(context: ServiceContext) -> list[RuleWork]:
    """Return the rules of live plans that have a scheduled time in (mark, now]."""
    now = context.now()
    work: list[RuleWork] = []
    with context.catalog.transaction() as session:
        plans = session.scalars(select(PlanRow).where(PlanRow.deletion_date.is_(None)).order_by(PlanRow.name))
        for plan_row in plans.all():
            version = session.get(BackupPlanVersion, plan_row.current_version_id)
            if version is None:
                continue
            plan = BackupPlan.from_aws(version.document)
            marks = {
                mark.rule_id: mark
                for mark in session.scalars(select(ScheduleMark).where(ScheduleMark.plan_id == plan_row.id))
            }
            for rule in plan.rules:
                if rule.rule_id is None:
                    continue
                item = RuleWork(plan_row.id, version.version_id, rule, rule.rule_id, version.creation_date)
                mark = marks.get(rule.rule_id)
                start = (
                    mark.evaluated_until
                    if mark is not None
                    else rule_introduced(session, plan_row.id, rule.rule_id, version)
                )
                upcoming = rule.next_run_after(evaluation_start(item, start), anchor=item.anchor)
                if upcoming is not None and upcoming <= now:
                    work.append(replace(item, first_due=upcoming))
    return work


def create_run_jobs(
    session: Session,
    context: ServiceContext,
    item: RuleWork,
    plan: BackupPlan,
    resources: list[tuple[ProtectedResource, str]],
    scheduled: datetime,
    outcome: RuleOutcome,
) -> int:
    """Create the BACKUP jobs of one scheduled run; return how many were created."""
    now = context.now()
    busy = set(
        session.scalars(
            select(Job.resource_arn).where(
                Job.job_type == JobType.BACKUP.value, Job.state.in_(NON_TERMINAL_STATES)
            )
        )
    )
    tokens = {
        resource.arn: run_token(item.plan_id, item.rule_id, resource.arn, scheduled)
        for resource, _ in resources
    }
    existing: set[str] = set()
    wanted = list(tokens.values())
    for start in range(0, len(wanted), TOKEN_BATCH):
        batch = wanted[start : start + TOKEN_BATCH]
        existing.update(
            token
            for token in session.scalars(
                select(Job.idempotency_token).where(Job.idempotency_token.in_(batch))
            )
            if token
        )
    created = 0
    for resource, role in resources:
        token = tokens[resource.arn]
        if token in existing:
            continue  # this run already has its job (created before a crash or by a former leader)
        if resource.arn in busy:
            outcome.skip(session, now, item, scheduled, resource.arn, "a backup job of it is still running")
            continue
        job = create_scheduled_job(session, context, item, plan, role, resource, scheduled, token)
        busy.add(resource.arn)
        outcome.jobs.append(job.id)
        created += 1
    return created


def run_token(plan_id: str, rule_id: str, resource_arn: str, scheduled: datetime) -> str:
    """The idempotency token of one scheduled backup: the same run of the same resource, the same token."""
    key = "\n".join((plan_id, rule_id, resource_arn, scheduled.isoformat()))
    return "schedule-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def create_scheduled_job(
    session: Session,
    context: ServiceContext,
    item: RuleWork,
    plan: BackupPlan,
    iam_role_arn: str | None,
    resource: ProtectedResource,
    scheduled: datetime,
    token: str | None,
) -> Job:
    """Create the BACKUP job of a rule for one resource, scheduled at ``scheduled``."""
    rule = item.rule
    plan_row = session.get(PlanRow, item.plan_id)  # the identity map answers after the first job
    if plan_row is None:
        raise ResourceNotFoundException(f"Backup plan {item.plan_id} does not exist.")
    parameters: dict[str, Any] = {
        "CreatedBy": {
            "BackupPlanId": item.plan_id,
            "BackupPlanArn": plan_row.arn,
            "BackupPlanVersion": item.version_id,
            "BackupRuleId": item.rule_id,
        },
        "RuleName": rule.rule_name,
        "ScheduledTime": scheduled.isoformat(),
        "StartWindowMinutes": rule.start_window_minutes,
        COMPLETION_WINDOW_PARAMETER: rule.completion_window_minutes,
        "RecoveryPointTags": dict(rule.recovery_point_tags),
        "CopyActions": [action.to_aws() for action in rule.copy_actions],
    }
    if rule.lifecycle is not None:
        parameters["Lifecycle"] = rule.lifecycle.to_aws()
    if iam_role_arn:
        parameters["IamRoleArn"] = iam_role_arn
    vault = session.get(BackupVault, rule.target_backup_vault_name)
    point_arn = None
    if vault is not None:  # a deleted vault: the job fails and says so
        parameters["BackupVaultArn"] = vault.arn
        # As StartBackupJob does: the point's ARN is fixed up front, so every attempt records the same one.
        point_arn = recovery_point_arn(context.arn_context(vault.location_name), str(uuid.uuid4()))
    options = next(
        (
            s.backup_options
            for s in plan.advanced_backup_settings
            if s.resource_type.value == resource.resource_type
        ),
        None,
    )
    if options:
        parameters["BackupOptions"] = dict(options)
    return create_job(
        session,
        context,
        JobType.BACKUP,
        resource_arn=resource.arn,
        resource_type=resource.resource_type,
        vault_name=rule.target_backup_vault_name,
        recovery_point_arn=point_arn,
        plan_id=item.plan_id,
        plan_version_id=item.version_id,
        rule_id=item.rule_id,
        idempotency_token=token,
        parameters=parameters,
        start_by=scheduled + timedelta(minutes=rule.start_window_minutes),
    )


def evaluation_start(item: RuleWork, mark: datetime) -> datetime:
    """Where the search for due runs starts: the mark, and for rate() never before the anchor."""
    # rate() periods start at the anchor; the anchor itself is the moment the rule took effect, not a run.
    if isinstance(item.rule.schedule, RateSchedule):
        return max(mark, item.anchor)
    return mark


def runs_between(item: RuleWork, after: datetime, until: datetime) -> Iterator[datetime]:
    """Yield the rule's scheduled times in (after, until], jumping over a long backlog of lapsed runs."""
    cursor = after
    listed = 0
    lapsed_before = until - timedelta(minutes=item.rule.start_window_minutes)
    while True:
        upcoming = item.rule.next_run_after(cursor, anchor=item.anchor)
        if upcoming is None or upcoming > until:
            return
        if listed >= MAX_LISTED_SKIPS and upcoming < lapsed_before:
            # A long outage: do not list thousands of lapsed runs; report the last of them.
            last = item.rule.latest_run_at_or_before(lapsed_before, anchor=item.anchor)
            if last is not None and last > upcoming:
                upcoming = last
        listed += 1
        yield upcoming
        cursor = upcoming


def rule_introduced(
    session: Session, plan_id: str, rule_id: str, current: BackupPlanVersion | None
) -> datetime:
    """When the rule first appeared in the plan: its schedule counts from there."""
    versions = session.scalars(
        select(BackupPlanVersion)
        .where(BackupPlanVersion.plan_id == plan_id)
        .order_by(BackupPlanVersion.version_number)
    )
    for version in versions:
        if any(rule.get("RuleId") == rule_id for rule in version.document.get("Rules", [])):
            return version.creation_date
    if current is None:
        raise ResourceNotFoundException(f"Backup plan {plan_id} has no version with rule {rule_id}.")
    return current.creation_date


def selected_resources(session: Session, selections: list[Selection]) -> list[tuple[ProtectedResource, str]]:
    """Return the resources the plan's selections assign, each with the IamRoleArn of the first match."""
    if not selections:
        return []
    discovered = {
        endpoint.name: endpoint.last_discovery_date for endpoint in session.scalars(select(SourceEndpoint))
    }
    chosen: list[tuple[ProtectedResource, str]] = []
    for resource in session.scalars(select(ProtectedResource).order_by(ProtectedResource.arn)):
        if vanished(resource, discovered.get(resource.endpoint_name or "")):
            continue
        tags = resource.native_tags or {}
        role = next(
            (s.iam_role_arn for s in selections if selection_matches(s, resource.arn, tags)),
            None,
        )
        if role is not None:
            chosen.append((resource, role))
    return chosen


def vanished(resource: ProtectedResource, last_discovery: datetime | None) -> bool:
    """True when the resource lost its endpoint or its endpoint's latest discovery no longer saw it."""
    if resource.endpoint_name is None:
        return True  # its endpoint was deleted: nothing could back it up
    if last_discovery is None:
        return False
    # Discovery stamps the endpoint and every resource it saw with the same instant.
    return resource.last_seen_date is None or resource.last_seen_date < last_discovery
