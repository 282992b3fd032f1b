"""Backup plans: Create/Get/Update/Delete/ListBackupPlans and ListBackupPlanVersions.

Every create or update stores a new immutable version with a new VersionId; older versions stay
readable (GetBackupPlan with VersionId, ListBackupPlanVersions). Deletion is soft: the plan gets a
DeletionDate, stays readable, and its name becomes free again. ``CreationDate`` next to a
``VersionId`` is that version's creation time.

A rule keeps its RuleId across versions as long as its RuleName stays: the scheduler remembers runs
per RuleId, so editing a plan neither re-runs nor forgets its rules. Rules must target vaults that
exist (copy actions too), so a typo fails at plan creation instead of at 5 a.m.
"""

from __future__ import annotations

import base64
import copy
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.models import BackupPlan as PlanRow
from backvault.control.catalog.models import BackupPlanVersion, BackupSelection, BackupVault
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.pagination import paginate
from backvault.domain.arn import backup_plan_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_int,
    expect_str,
)
from backvault.domain.plans import BackupPlan, parse_backup_plan, validate_recovery_point_tags

MAX_SCHEDULED_RUNS_PREVIEW = 10


def create_backup_plan(
    context: ServiceContext,
    backup_plan: Any,
    *,
    backup_plan_tags: dict[str, str] | None = None,
    creator_request_id: str | None = None,
) -> dict[str, Any]:
    """Create a plan (version 1); a retry with the same CreatorRequestId returns the same plan."""
    plan = parse_backup_plan(backup_plan)
    tags = validate_recovery_point_tags(backup_plan_tags or {}, "BackupPlanTags")
    now = context.now()
    with context.catalog.transaction() as session:
        if creator_request_id:
            earlier = session.scalars(
                select(PlanRow).where(
                    PlanRow.creator_request_id == creator_request_id, PlanRow.deletion_date.is_(None)
                )
            ).first()
            if earlier is not None:
                return _version_answer(earlier, _version(session, earlier, None))
        _refuse_taken_name(session, plan.backup_plan_name)
        _check_vaults(session, plan)
        plan_id = str(uuid.uuid4())
        row = PlanRow(
            id=plan_id,
            arn=backup_plan_arn(context.arn_context(), plan_id),
            name=plan.backup_plan_name,
            active_name=plan.backup_plan_name,
            current_version_id="",
            version_count=0,
            creation_date=now,
            creator_request_id=creator_request_id,
            tags=tags,
        )
        version = _add_version(session, row, plan, None, now)
        record_event(
            session,
            EventType.BACKUP_PLAN_CREATED,
            now,
            resource_arn=row.arn,
            detail={"BackupPlanId": plan_id, "VersionId": version.version_id},
        )
        return _version_answer(row, version)


def get_backup_plan(
    context: ServiceContext,
    backup_plan_id: str,
    *,
    version_id: str | None = None,
    max_scheduled_runs_preview: int | None = None,
) -> dict[str, Any]:
    """Return a plan's current version, or the version asked for, with AWS's GetBackupPlan members."""
    preview = (
        0
        if max_scheduled_runs_preview is None
        else expect_int(max_scheduled_runs_preview, "MaxScheduledRunsPreview")
    )
    if not 0 <= preview <= MAX_SCHEDULED_RUNS_PREVIEW:
        raise InvalidParameterValueException(
            f"MaxScheduledRunsPreview ({preview}) must be between 0 and {MAX_SCHEDULED_RUNS_PREVIEW}."
        )
    with context.catalog.transaction() as session:
        row = get_plan_row(session, backup_plan_id)
        version = _version(session, row, version_id)
        body = _member(row, version)
        del body["BackupPlanName"]
        body["BackupPlan"] = copy.deepcopy(version.document)
        if preview:
            body["ScheduledRunsPreview"] = (
                [] if row.deletion_date else _scheduled_runs(version, context.now(), preview)
            )
        return body


def update_backup_plan(context: ServiceContext, backup_plan_id: str, backup_plan: Any) -> dict[str, Any]:
    """Store a new version of a plan and make it current."""
    plan = parse_backup_plan(backup_plan)
    now = context.now()
    with context.catalog.transaction() as session:
        # Row lock on PostgreSQL: two concurrent updates would otherwise pick the same version number.
        row = get_plan_row(session, backup_plan_id, for_update=True)
        if row.deletion_date is not None:
            raise ResourceNotFoundException(f"Backup plan {row.id} was deleted; it can no longer be updated.")
        if plan.backup_plan_name != row.name:
            _refuse_taken_name(session, plan.backup_plan_name)
        _check_vaults(session, plan)
        previous = _version(session, row, None)
        version = _add_version(session, row, plan, previous, now)
        record_event(
            session,
            EventType.BACKUP_PLAN_MODIFIED,
            now,
            resource_arn=row.arn,
            detail={"BackupPlanId": row.id, "VersionId": version.version_id},
        )
        return _version_answer(row, version)


def delete_backup_plan(context: ServiceContext, backup_plan_id: str) -> dict[str, Any]:
    """Soft-delete a plan; refused while it still has selections (AWS's rule)."""
    now = context.now()
    with context.catalog.transaction() as session:
        row = get_plan_row(session, backup_plan_id, for_update=True)
        if row.deletion_date is not None:
            raise ResourceNotFoundException(f"Backup plan {row.id} is already deleted.")
        selections = session.scalars(
            select(BackupSelection.id).where(BackupSelection.plan_id == row.id)
        ).all()
        if selections:
            raise InvalidRequestException(
                f"Backup plan {row.id} still has {len(selections)} selection(s); delete them before the plan."
            )
        row.deletion_date = now
        row.active_name = None
        record_event(
            session, EventType.BACKUP_PLAN_DELETED, now, resource_arn=row.arn, detail={"BackupPlanId": row.id}
        )
        return {
            "BackupPlanId": row.id,
            "BackupPlanArn": row.arn,
            "DeletionDate": now,
            "VersionId": row.current_version_id,
        }


def list_backup_plans(
    context: ServiceContext,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
    include_deleted: bool | None = None,
) -> dict[str, Any]:
    """List plans by name (deleted ones only with IncludeDeleted), each at its current version."""
    statement = select(PlanRow)
    if not include_deleted:
        statement = statement.where(PlanRow.deletion_date.is_(None))
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [PlanRow.name, PlanRow.id],
            operation="ListBackupPlans",
            next_token=next_token,
            max_results=max_results,
        )
        wanted = [row.current_version_id for row in rows]
        versions = {
            version.version_id: version
            for version in session.scalars(
                select(BackupPlanVersion).where(BackupPlanVersion.version_id.in_(wanted))
            )
        }
        response: dict[str, Any] = {
            "BackupPlansList": [_member(row, versions[row.current_version_id]) for row in rows]
        }
        if token:
            response["NextToken"] = token
        return response


def list_backup_plan_versions(
    context: ServiceContext,
    backup_plan_id: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """List every version of a plan, newest first."""
    with context.catalog.transaction() as session:
        row = get_plan_row(session, backup_plan_id)
        versions, token = paginate(
            session,
            select(BackupPlanVersion).where(BackupPlanVersion.plan_id == row.id),
            [BackupPlanVersion.version_number],
            operation=f"ListBackupPlanVersions/{row.id}",
            next_token=next_token,
            max_results=max_results,
            descending=True,
        )
        response: dict[str, Any] = {"BackupPlanVersionsList": [_member(row, version) for version in versions]}
        if token:
            response["NextToken"] = token
        return response


# --- helpers for the other services -------------------------------------------------------------


def get_plan_row(session: Session, backup_plan_id: str, *, for_update: bool = False) -> PlanRow:
    """Return the plan row (deleted ones included), or raise ResourceNotFoundException."""
    statement = select(PlanRow).where(PlanRow.id == expect_str(backup_plan_id, "BackupPlanId"))
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Backup plan {backup_plan_id!r} does not exist.")
    return row


def load_plan(
    session: Session, backup_plan_id: str, version_id: str | None = None
) -> tuple[PlanRow, BackupPlan]:
    """Return a plan row and the domain model of its current (or given) version, RuleIds included."""
    row = get_plan_row(session, backup_plan_id)
    return row, BackupPlan.from_aws(_version(session, row, version_id).document)


def _version(session: Session, row: PlanRow, version_id: str | None) -> BackupPlanVersion:
    version = session.get(BackupPlanVersion, version_id or row.current_version_id)
    if version is None or version.plan_id != row.id:
        raise ResourceNotFoundException(f"Backup plan {row.id} has no version {version_id!r}.")
    return version


def _add_version(
    session: Session, row: PlanRow, plan: BackupPlan, previous: BackupPlanVersion | None, now: datetime
) -> BackupPlanVersion:
    known: dict[str, str] = {}
    if previous is not None:
        known = {rule["RuleName"]: rule["RuleId"] for rule in previous.document["Rules"] if "RuleId" in rule}
    rules = tuple(
        replace(rule, rule_id=known.get(rule.rule_name) or str(uuid.uuid4())) for rule in plan.rules
    )
    document = replace(plan, rules=rules).to_aws()
    # AWS's VersionIds are base64 of a UUID; url-safe, since clients pass them in query strings.
    version_id = base64.urlsafe_b64encode(str(uuid.uuid4()).encode("ascii")).decode("ascii")
    row.version_count += 1
    row.current_version_id = version_id
    row.name = row.active_name = plan.backup_plan_name
    version = BackupPlanVersion(
        version_id=version_id,
        plan_id=row.id,
        version_number=row.version_count,
        plan_name=plan.backup_plan_name,
        document=document,
        creation_date=now,
    )
    session.add(row)
    try:
        session.flush()  # the plan row first: the version's foreign key points at it
        session.add(version)
        session.flush()
    except IntegrityError:
        raise AlreadyExistsException(
            f"A backup plan named {plan.backup_plan_name!r} already exists, or the plan was changed at "
            "the same time; try again."
        ) from None
    return version


def _refuse_taken_name(session: Session, name: str) -> None:
    taken = session.scalars(select(PlanRow).where(PlanRow.active_name == name)).first()
    if taken is not None:
        raise AlreadyExistsException(
            f"A backup plan named {name!r} already exists ({taken.id}).",
            Arn=taken.arn,
            CreatorRequestId=taken.creator_request_id,
        )


def _check_vaults(session: Session, plan: BackupPlan) -> None:
    for rule in plan.rules:
        if session.get(BackupVault, rule.target_backup_vault_name) is None:
            raise InvalidParameterValueException(
                f"Rule {rule.rule_name!r}: TargetBackupVaultName {rule.target_backup_vault_name!r} is not a "
                "backup vault; create the vault first."
            )
        for action in rule.copy_actions:
            arn = action.destination_backup_vault_arn
            if session.scalars(select(BackupVault.name).where(BackupVault.arn == arn)).first() is None:
                raise InvalidParameterValueException(
                    f"Rule {rule.rule_name!r}: copy destination {arn} is not a backup vault of this "
                    "backvault (check the vault name, the location in the ARN's region part and the account)."
                )


def _member(row: PlanRow, version: BackupPlanVersion) -> dict[str, Any]:
    """Return a BackupPlansListMember for one version (ListBackupPlans, ListBackupPlanVersions)."""
    body: dict[str, Any] = {
        "BackupPlanArn": row.arn,
        "BackupPlanId": row.id,
        "CreationDate": version.creation_date,
        "VersionId": version.version_id,
        "BackupPlanName": version.plan_name,
    }
    optional = {
        "DeletionDate": row.deletion_date,
        "CreatorRequestId": row.creator_request_id,
        "LastExecutionDate": row.last_execution_date,
        "AdvancedBackupSettings": version.document.get("AdvancedBackupSettings"),
    }
    body.update({key: value for key, value in optional.items() if value})
    return body


def _version_answer(row: PlanRow, version: BackupPlanVersion) -> dict[str, Any]:
    """Return CreateBackupPlan's and UpdateBackupPlan's answer."""
    body: dict[str, Any] = {
        "BackupPlanId": row.id,
        "BackupPlanArn": row.arn,
        "CreationDate": version.creation_date,
        "VersionId": version.version_id,
    }
    if version.document.get("AdvancedBackupSettings"):
        body["AdvancedBackupSettings"] = version.document["AdvancedBackupSettings"]
    return body


def _scheduled_runs(version: BackupPlanVersion, now: datetime, count: int) -> list[dict[str, Any]]:
    plan = BackupPlan.from_aws(version.document)
    runs: list[tuple[datetime, str, str]] = []
    for rule in plan.rules:
        moment = now
        kind = "CONTINUOUS" if rule.enable_continuous_backup else "SNAPSHOTS"
        for _ in range(count):
            # rate() counts from the version's creation, the moment the rule came into force.
            upcoming = rule.next_run_after(moment, anchor=version.creation_date)
            if upcoming is None:
                break
            runs.append((upcoming.astimezone(UTC), rule.rule_id or "", kind))
            moment = upcoming
    runs.sort()
    return [
        {"ExecutionTime": at, "RuleId": rule_id, "RuleExecutionType": kind}
        for at, rule_id, kind in runs[:count]
    ]
