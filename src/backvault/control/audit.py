"""Audit: gather the catalog's facts and evaluate controls over them (what `backvault audit` prints).

The rules live in domain/audit.py; this module only reads the catalog into their fact types: which
plans select each protected resource, its recovery points with their vault's lock, and how long its
latest restore took.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, RecoveryPoint
from backvault.control.catalog.models import BackupPlan as PlanRow
from backvault.control.catalog.models import BackupVault, ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.plans import load_plan
from backvault.control.selections import plan_selections
from backvault.domain.arn import parse_arn
from backvault.domain.audit import (
    AuditFacts,
    ControlName,
    ControlScope,
    Evaluation,
    PlanFacts,
    PointFacts,
    ResourceFacts,
    RuleFacts,
    VaultFacts,
    control_parameters,
    evaluate,
)
from backvault.domain.selection import selection_matches

# What `backvault audit` checks when no framework is given: every control with AWS's defaults.
DEFAULT_CONTROLS: tuple[ControlName, ...] = tuple(ControlName)


@dataclass(frozen=True)
class ControlSpec:
    """One control of a framework: its name, input parameters (AWS shape) and scope."""

    name: str
    parameters: Sequence[Mapping[str, str]] = ()
    scope: ControlScope = field(default_factory=ControlScope)


def gather_facts(context: ServiceContext) -> AuditFacts:
    """Read everything the controls evaluate from the catalog, in one transaction."""
    with context.catalog.transaction() as session:
        plans = _live_plans(session)
        vaults = {vault.name: vault for vault in session.scalars(select(BackupVault))}
        points_by_resource: dict[str, list[PointFacts]] = {}
        for point in session.scalars(select(RecoveryPoint).where(RecoveryPoint.status != "DELETED")):
            points_by_resource.setdefault(point.resource_arn, []).append(
                _point_facts(point, vaults.get(point.vault_name))
            )
        restores = _last_restore_minutes(session)
        resources = tuple(
            _resource_facts(context, row, plans, points_by_resource.get(row.arn, []), restores.get(row.arn))
            for row in session.scalars(select(ProtectedResource).order_by(ProtectedResource.arn))
        )
        return AuditFacts(
            resources=resources,
            plans=tuple(facts for _, facts, _ in plans),
            vaults=tuple(
                VaultFacts(vault.arn, vault.name, vault.access_policy, dict(vault.tags))
                for vault in vaults.values()
            ),
        )


def evaluate_controls(
    context: ServiceContext, controls: Iterable[ControlSpec] | None = None, *, facts: AuditFacts | None = None
) -> list[Evaluation]:
    """Evaluate controls (by default every control with AWS's defaults) over the catalog's facts."""
    gathered = facts if facts is not None else gather_facts(context)
    specs = list(controls) if controls is not None else [ControlSpec(name) for name in DEFAULT_CONTROLS]
    now = context.now()
    results: list[Evaluation] = []
    for spec in specs:
        parameters = control_parameters(spec.name, spec.parameters)
        results.extend(evaluate(spec.name, parameters, spec.scope, gathered, now))
    return results


def findings(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """Only the non-compliant evaluations, ordered by control then resource."""
    return sorted(
        (item for item in evaluations if not item.compliant),
        key=lambda item: (item.control, item.resource_arn),
    )


def evaluation_to_aws(item: Evaluation) -> dict[str, Any]:
    """Return an evaluation as a report row."""
    return {
        "ControlName": item.control.value,
        "ResourceArn": item.resource_arn,
        "ResourceType": item.resource_type,
        "ComplianceStatus": "COMPLIANT" if item.compliant else "NON_COMPLIANT",
        "Reason": item.reason,
    }


# --- facts ---------------------------------------------------------------------------------------


def _live_plans(session: Session) -> list[tuple[PlanRow, PlanFacts, list[Any]]]:
    """Return each live plan row with its facts and its selections."""
    result = []
    for row in session.scalars(select(PlanRow).where(PlanRow.deletion_date.is_(None)).order_by(PlanRow.name)):
        _, plan = load_plan(session, row.id)
        rules = tuple(
            RuleFacts(
                rule.rule_name,
                rule.schedule_expression,
                rule.lifecycle.delete_after_days if rule.lifecycle is not None else None,
            )
            for rule in plan.rules
        )
        result.append(
            (row, PlanFacts(row.arn, row.name, rules, dict(row.tags)), plan_selections(session, row.id))
        )
    return result


def _resource_facts(
    context: ServiceContext,
    row: ProtectedResource,
    plans: list[tuple[PlanRow, PlanFacts, list[Any]]],
    points: list[PointFacts],
    restore_minutes: float | None,
) -> ResourceFacts:
    selected = tuple(
        plan_row.name
        for plan_row, _, selections in plans
        if any(selection_matches(selection, row.arn, row.native_tags) for selection in selections)
    )
    arn = parse_arn(row.arn)
    return ResourceFacts(
        arn=row.arn,
        resource_type=row.resource_type,
        tags=dict(row.native_tags),
        home_region=arn.region or context.default_location,
        home_account=arn.account or context.account,
        selected_by_plans=selected,
        points=tuple(points),
        last_restore_minutes=restore_minutes,
    )


def _point_facts(point: RecoveryPoint, vault: BackupVault | None) -> PointFacts:
    arn = parse_arn(point.arn)
    delete_after = (point.lifecycle or {}).get("DeleteAfterDays")
    return PointFacts(
        arn=point.arn,
        vault_name=point.vault_name,
        region=arn.region,
        account=arn.account,
        created=point.creation_date,
        delete_after_days=int(delete_after) if delete_after is not None else None,
        vault_locked=bool(vault is not None and vault.locked),
        vault_min_retention_days=vault.min_retention_days if vault is not None else None,
        vault_max_retention_days=vault.max_retention_days if vault is not None else None,
    )


def _last_restore_minutes(session: Session) -> dict[str, float]:
    """Minutes the latest completed restore of each resource took, keyed by the source resource ARN."""
    latest: dict[str, tuple[datetime, float]] = {}
    rows = session.execute(
        select(Job.resource_arn, Job.started_date, Job.completion_date).where(
            Job.job_type == "RESTORE", Job.state == "COMPLETED", Job.started_date.is_not(None)
        )
    )
    for resource_arn, started, completed in rows:
        if resource_arn is None or started is None or completed is None:
            continue
        minutes = (completed - started).total_seconds() / 60
        if resource_arn not in latest or completed > latest[resource_arn][0]:
            latest[resource_arn] = (completed, minutes)
    return {arn: minutes for arn, (_, minutes) in latest.items()}
