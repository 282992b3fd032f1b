"""Audit frameworks: Create/Describe/Update/Delete/ListFrameworks and their continuous evaluation.

A framework is a list of AWS Backup Audit Manager controls, each with input parameters (AWS's names,
defaults from domain/audit.py) and a scope (resource types, resource ARNs with a trailing ``*``, one
tag). The latest verdict of every control on every resource in its scope is stored with the time it
was made and the time its status last changed, so reports and ``describe_framework_compliance``
show compliance without recomputing it.

Evaluation runs when a framework is created or updated, and from the scheduler's tick through
``evaluate_frameworks``: a framework is re-evaluated when the event log has grown since its last
evaluation (at most once per ``min_interval``) and at least every ``max_age``, since some controls
depend on time alone (the age of the last recovery point). Every change of a verdict to or from
NON_COMPLIANT is recorded as an event (AUDIT_FINDING, AUDIT_FINDING_RESOLVED); the audit's own events
never trigger another evaluation.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.audit import ControlSpec, evaluate_controls, gather_facts
from backvault.control.audit_documents import (
    parse_framework_controls,
    validate_audit_name,
    validate_description,
)
from backvault.control.catalog.activity import Event
from backvault.control.catalog.audit_models import AuditEvaluation, AuditFramework, ReportPlan
from backvault.control.context import ServiceContext
from backvault.control.events import record_event
from backvault.control.pagination import paginate
from backvault.domain.arn import framework_arn
from backvault.domain.audit import (
    ControlScope,
    Evaluation,
)
from backvault.domain.errors import (
    AlreadyExistsException,
    ConflictException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.plans import validate_recovery_point_tags

logger = logging.getLogger(__name__)

DEPLOYMENT_COMPLETED = "COMPLETED"
FRAMEWORK_ACTIVE = "ACTIVE"
COMPLIANT = "COMPLIANT"
NON_COMPLIANT = "NON_COMPLIANT"
# A control with no resource in its scope has nothing to judge (AWS shows "insufficient data").
INSUFFICIENT_DATA = "INSUFFICIENT_DATA"

DEFAULT_MIN_INTERVAL = timedelta(minutes=1)
DEFAULT_MAX_AGE = timedelta(minutes=15)

# The audit's own event types (plain strings: events.EventType does not list them yet). They all
# start with AUDIT_EVENT_PREFIX, and never make the audit evaluate again.
AUDIT_EVENT_PREFIX = "AUDIT_"
FRAMEWORK_CREATED = "AUDIT_FRAMEWORK_CREATED"
FRAMEWORK_UPDATED = "AUDIT_FRAMEWORK_UPDATED"
FRAMEWORK_DELETED = "AUDIT_FRAMEWORK_DELETED"
FINDING = "AUDIT_FINDING"
FINDING_RESOLVED = "AUDIT_FINDING_RESOLVED"


def create_framework(
    context: ServiceContext,
    framework_name: str,
    framework_controls: Any,
    *,
    framework_description: str | None = None,
    idempotency_token: str | None = None,
    framework_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create a framework and evaluate it; a retry with the same IdempotencyToken returns it again."""
    name = validate_audit_name(framework_name, "FrameworkName")
    controls = parse_framework_controls(framework_controls)
    description = validate_description(framework_description, "FrameworkDescription")
    tags = validate_recovery_point_tags(framework_tags or {}, "FrameworkTags")
    token = expect_str(idempotency_token, "IdempotencyToken") if idempotency_token is not None else None
    with context.catalog.transaction() as session:
        existing = session.scalars(select(AuditFramework).where(AuditFramework.name == name)).first()
        if existing is not None:
            if token is not None and existing.idempotency_token == token:
                return {"FrameworkName": existing.name, "FrameworkArn": existing.arn}
            raise AlreadyExistsException(f"Framework {name!r} already exists.", Arn=existing.arn)
        framework_id = str(uuid.uuid4())
        row = AuditFramework(
            id=framework_id,
            name=name,
            arn=framework_arn(context.arn_context(), name, framework_id),
            description=description,
            controls=controls,
            deployment_status=DEPLOYMENT_COMPLETED,
            creation_time=context.now(),
            idempotency_token=token,
            tags=tags,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(f"Framework {name!r} already exists.") from None
        record_event(session, FRAMEWORK_CREATED, row.creation_time, resource_arn=row.arn)
        answer = {"FrameworkName": row.name, "FrameworkArn": row.arn}
    _evaluate_after_change(context, name)
    return answer


def describe_framework(context: ServiceContext, framework_name: str) -> dict[str, Any]:
    """Return DescribeFramework's answer."""
    with context.catalog.transaction() as session:
        row = get_framework_row(session, framework_name)
        body: dict[str, Any] = {"FrameworkName": row.name, "FrameworkArn": row.arn}
        if row.description:
            body["FrameworkDescription"] = row.description
        body.update(
            FrameworkControls=[dict(control) for control in row.controls],
            CreationTime=row.creation_time,
            DeploymentStatus=row.deployment_status,
            FrameworkStatus=FRAMEWORK_ACTIVE,
        )
        if row.idempotency_token:
            body["IdempotencyToken"] = row.idempotency_token
        return body


def update_framework(
    context: ServiceContext,
    framework_name: str,
    *,
    framework_description: str | None = None,
    framework_controls: Any = None,
    idempotency_token: str | None = None,
) -> dict[str, Any]:
    """Change a framework's description or controls and re-evaluate it; a repeated token changes nothing."""
    description = validate_description(framework_description, "FrameworkDescription")
    controls = parse_framework_controls(framework_controls) if framework_controls is not None else None
    token = expect_str(idempotency_token, "IdempotencyToken") if idempotency_token is not None else None
    with context.catalog.transaction() as session:
        row = get_framework_row(session, framework_name, for_update=True)
        answer = {"FrameworkName": row.name, "FrameworkArn": row.arn, "CreationTime": row.creation_time}
        if token is not None and token == row.idempotency_token:
            return answer
        if description is not None:
            row.description = description
        if controls is not None:
            row.controls = controls
        row.idempotency_token = token
        record_event(session, FRAMEWORK_UPDATED, context.now(), resource_arn=row.arn)
        name = row.name
    _evaluate_after_change(context, name)
    return answer


def delete_framework(context: ServiceContext, framework_name: str) -> dict[str, Any]:
    """Delete a framework and its evaluations; refused while a report plan reports on it."""
    with context.catalog.transaction() as session:
        row = get_framework_row(session, framework_name, for_update=True)
        users = [
            plan.name
            for plan in session.scalars(select(ReportPlan).order_by(ReportPlan.name))
            if row.arn in (plan.report_setting.get("FrameworkArns") or [])
        ]
        if users:
            raise ConflictException(
                f"Framework {row.name!r} cannot be deleted: report plan(s) {', '.join(users)} report on it. "
                "Delete them or remove the framework from their ReportSetting first."
            )
        for evaluation in session.scalars(
            select(AuditEvaluation).where(AuditEvaluation.framework_id == row.id)
        ):
            session.delete(evaluation)
        session.delete(row)
        record_event(session, FRAMEWORK_DELETED, context.now(), resource_arn=row.arn)
    return {}


def list_frameworks(
    context: ServiceContext, *, max_results: int | None = None, next_token: str | None = None
) -> dict[str, Any]:
    """Return ListFrameworks' answer, by framework name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(AuditFramework),
            [AuditFramework.name],
            operation="ListFrameworks",
            next_token=next_token,
            max_results=max_results,
        )
        frameworks = []
        for row in rows:
            item: dict[str, Any] = {"FrameworkName": row.name, "FrameworkArn": row.arn}
            if row.description:
                item["FrameworkDescription"] = row.description
            item.update(
                NumberOfControls=len(row.controls),
                CreationTime=row.creation_time,
                DeploymentStatus=row.deployment_status,
            )
            frameworks.append(item)
        response: dict[str, Any] = {"Frameworks": frameworks}
        if token:
            response["NextToken"] = token
        return response


# --- evaluation ----------------------------------------------------------------------------------


def evaluate_frameworks(
    context: ServiceContext,
    *,
    framework_names: Iterable[str] | None = None,
    force: bool = False,
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> list[dict[str, Any]]:
    """Re-evaluate the frameworks that are due (all given ones with force); summarise each one evaluated."""
    now = context.now()
    wanted = set(framework_names) if framework_names is not None else None
    with context.catalog.transaction() as session:
        latest_event = _latest_relevant_event(session)
        statement = select(AuditFramework).order_by(AuditFramework.name)
        if wanted is not None:
            statement = statement.where(AuditFramework.name.in_(sorted(wanted)))
        due = [
            (row.id, row.controls)
            for row in session.scalars(statement)
            if force or _is_due(row, latest_event, now, min_interval, max_age)
        ]
    if not due:
        return []
    facts = gather_facts(context)  # once for all frameworks: it is the expensive part
    summaries = []
    for framework_id, controls in due:
        evaluations = evaluate_controls(context, control_specs(controls), facts=facts)
        summary = _store_evaluations(context, framework_id, controls, evaluations, latest_event)
        if summary is not None:
            summaries.append(summary)
    return summaries


def describe_framework_compliance(context: ServiceContext, framework_name: str) -> dict[str, Any]:
    """Return a framework's stored compliance per control and resource (evaluating it if never done)."""
    with context.catalog.transaction() as session:
        evaluated = get_framework_row(session, framework_name).last_evaluation_time is not None
    if not evaluated:
        evaluate_frameworks(context, framework_names=[framework_name], force=True)
    with context.catalog.transaction() as session:
        row = get_framework_row(session, framework_name)
        stored = framework_evaluations(session, row.id)
        controls = []
        for control in row.controls:
            mine = [item for item in stored if item.control_name == control["ControlName"]]
            failing = sum(1 for item in mine if item.compliance_status == NON_COMPLIANT)
            controls.append(
                {
                    "ControlName": control["ControlName"],
                    "ComplianceStatus": _status(len(mine), failing),
                    "CompliantResourceCount": len(mine) - failing,
                    "NonCompliantResourceCount": failing,
                    "Evaluations": [evaluation_row_to_aws(item) for item in mine],
                }
            )
        failing_total = sum(1 for item in stored if item.compliance_status == NON_COMPLIANT)
        return {
            "FrameworkName": row.name,
            "FrameworkArn": row.arn,
            "LastEvaluationTime": row.last_evaluation_time,
            "ComplianceStatus": NON_COMPLIANT if failing_total else COMPLIANT,
            "Controls": controls,
        }


def framework_evaluations(session: Session, framework_id: str) -> list[AuditEvaluation]:
    """Return a framework's stored evaluations, by control then resource."""
    return list(
        session.scalars(
            select(AuditEvaluation)
            .where(AuditEvaluation.framework_id == framework_id)
            .order_by(AuditEvaluation.control_name, AuditEvaluation.resource_arn)
        )
    )


def evaluation_row_to_aws(row: AuditEvaluation) -> dict[str, Any]:
    """Return a stored evaluation in the report shape."""
    return {
        "ControlName": row.control_name,
        "ResourceArn": row.resource_arn,
        "ResourceType": row.resource_type,
        "ComplianceStatus": row.compliance_status,
        "Reason": row.reason,
        "EvaluationTime": row.evaluation_time,
        "StatusSince": row.status_since,
    }


def control_specs(controls: Sequence[Mapping[str, Any]]) -> list[ControlSpec]:
    """Turn stored FrameworkControls into the specs control/audit.py evaluates."""
    specs = []
    for control in controls:
        scope = control.get("ControlScope") or {}
        specs.append(
            ControlSpec(
                control["ControlName"],
                list(control.get("ControlInputParameters") or []),
                ControlScope(
                    resource_types=tuple(scope.get("ComplianceResourceTypes") or ()),
                    resource_ids=tuple(scope.get("ComplianceResourceIds") or ()),
                    tags=dict(scope.get("Tags") or {}),
                ),
            )
        )
    return specs


# --- lookups ------------------------------------------------------------------------------------


def get_framework_row(session: Session, framework_name: str, *, for_update: bool = False) -> AuditFramework:
    """Return a framework row (row-locked on PostgreSQL if asked), or raise ResourceNotFoundException."""
    statement = select(AuditFramework).where(
        AuditFramework.name == expect_str(framework_name, "FrameworkName")
    )
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Framework {framework_name!r} does not exist.")
    return row


# --- storing verdicts ----------------------------------------------------------------------------


def _latest_relevant_event(session: Session) -> int:
    audit_event = Event.event_type.startswith(AUDIT_EVENT_PREFIX, autoescape=True)
    statement = select(func.max(Event.id)).where(~audit_event)
    return int(session.scalar(statement) or 0)


def _is_due(
    row: AuditFramework, latest_event: int, now: datetime, min_interval: timedelta, max_age: timedelta
) -> bool:
    if row.last_evaluation_time is None:
        return True
    age = now - row.last_evaluation_time
    changed = latest_event > (row.evaluated_through_event_id or 0)
    return age >= max_age or (changed and age >= min_interval)


def _store_evaluations(
    context: ServiceContext,
    framework_id: str,
    controls: list[dict[str, Any]],
    evaluations: list[Evaluation],
    latest_event: int,
) -> dict[str, Any] | None:
    """Replace a framework's stored verdicts, recording an event for each finding opened or resolved."""
    now = context.now()
    with context.catalog.transaction() as session:
        # The row lock serialises concurrent evaluations of one framework (API and scheduler).
        row = session.scalars(
            select(AuditFramework).where(AuditFramework.id == framework_id).with_for_update()
        ).first()
        if row is None or row.controls != controls:
            return None  # deleted or changed meanwhile: its own update evaluates it again
        stored = {
            (item.control_name, item.resource_arn): item for item in framework_evaluations(session, row.id)
        }
        fresh: set[tuple[str, str]] = set()
        failing = 0
        for verdict in evaluations:
            key = (verdict.control.value, verdict.resource_arn)
            if key in fresh:
                continue
            fresh.add(key)
            status = COMPLIANT if verdict.compliant else NON_COMPLIANT
            failing += status == NON_COMPLIANT
            previous = stored.get(key)
            old_status = previous.compliance_status if previous is not None else None
            if old_status != status and (old_status is not None or status == NON_COMPLIANT):
                _record_change(session, row, verdict, status, now)
            if previous is None:
                session.add(
                    AuditEvaluation(
                        framework_id=row.id,
                        control_name=key[0],
                        resource_arn=key[1],
                        resource_type=verdict.resource_type,
                        compliance_status=status,
                        reason=verdict.reason,
                        evaluation_time=now,
                        status_since=now,
                    )
                )
            else:
                if previous.compliance_status != status:
                    previous.status_since = now
                previous.compliance_status = status
                previous.resource_type = verdict.resource_type
                previous.reason = verdict.reason
                previous.evaluation_time = now
        for key, item in stored.items():
            if key not in fresh:  # the resource is gone or out of scope now
                session.delete(item)
        row.evaluated_through_event_id = latest_event
        row.last_evaluation_time = now
        return {
            "FrameworkName": row.name,
            "FrameworkArn": row.arn,
            "EvaluationTime": now,
            "CompliantCount": len(fresh) - failing,
            "NonCompliantCount": failing,
        }


def _record_change(
    session: Session, row: AuditFramework, verdict: Evaluation, status: str, now: datetime
) -> None:
    record_event(
        session,
        FINDING if status == NON_COMPLIANT else FINDING_RESOLVED,
        now,
        resource_arn=verdict.resource_arn,
        detail={
            "FrameworkName": row.name,
            "FrameworkArn": row.arn,
            "ControlName": verdict.control.value,
            "ResourceType": verdict.resource_type,
            "ComplianceStatus": status,
            "Reason": verdict.reason,
        },
    )


def _evaluate_after_change(context: ServiceContext, framework_name: str) -> None:
    # The change is committed; a failed evaluation is retried by the scheduler's next tick.
    try:
        evaluate_frameworks(context, framework_names=[framework_name], force=True)
    except Exception:
        logger.exception("evaluating framework %s after its change failed", framework_name)


def _status(evaluated: int, failing: int) -> str:
    if not evaluated:
        return INSUFFICIENT_DATA
    return NON_COMPLIANT if failing else COMPLIANT
