"""Audit over the catalog: which resources a plan protects, how fresh and how long-kept their points are."""

from __future__ import annotations

import json
from datetime import timedelta

from control_helpers import FakeClock, plan_document, selection_document

from backvault.control.audit import ControlSpec, evaluate_controls, evaluation_to_aws, findings, gather_facts
from backvault.control.catalog.activity import RecoveryPoint
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.plans import create_backup_plan
from backvault.control.selections import create_backup_selection
from backvault.control.vault_settings import put_backup_vault_access_policy
from backvault.control.vaults import create_backup_vault
from backvault.domain.audit import ControlName, ControlScope

DENY_RECOVERY_POINT_CHANGES = {
    "Effect": "Deny",
    "Principal": "*",
    "Action": "backup:*Recovery*",
    "Resource": "*",
}
FILES = "arn:aws:backvault:local:000000000000:filesystem:files/{}"


def _resource(context: ServiceContext, name: str, tags: dict[str, str]) -> str:
    arn = FILES.format(name)
    with context.catalog.transaction() as session:
        session.add(
            ProtectedResource(
                arn=arn,
                resource_type="Filesystem",
                resource_name=name,
                native_tags=tags,
                creation_date=context.now(),
            )
        )
    return arn


def _point(context: ServiceContext, resource_arn: str, age: timedelta, delete_after: int | None) -> None:
    point_id = f"p{abs(hash((resource_arn, age))) % 10**12}"
    with context.catalog.transaction() as session:
        session.add(
            RecoveryPoint(
                id=point_id,
                arn=f"arn:aws:backup:local:000000000000:recovery-point:{point_id}",
                vault_name="main",
                resource_arn=resource_arn,
                resource_type="Filesystem",
                status="COMPLETED",
                creation_date=context.now() - age,
                storage_class="WARM",
                lifecycle={"DeleteAfterDays": delete_after} if delete_after else None,
            )
        )


def test_audit_names_unprotected_stale_and_short_lived(context: ServiceContext, clock: FakeClock) -> None:
    create_backup_vault(context, "main")
    plan = create_backup_plan(
        context, plan_document(ScheduleExpression="cron(0 5 ? * * *)", Lifecycle={"DeleteAfterDays": 35})
    )
    create_backup_selection(context, plan["BackupPlanId"], selection_document())
    tagged = _resource(context, "tagged", {"backup": "daily"})
    untagged = _resource(context, "untagged", {})
    _point(context, tagged, timedelta(hours=3), 35)
    _point(context, untagged, timedelta(days=3), 7)

    results = evaluate_controls(
        context,
        [
            ControlSpec(ControlName.PROTECTED_BY_BACKUP_PLAN),
            ControlSpec(ControlName.LAST_RECOVERY_POINT_CREATED),
            ControlSpec(ControlName.RECOVERY_POINT_MINIMUM_RETENTION),
            ControlSpec(
                ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION,
                [{"ParameterName": "requiredFrequencyUnit", "ParameterValue": "days"}],
            ),
        ],
    )
    verdicts = {(r.control, r.resource_arn): r.compliant for r in results}
    assert verdicts[(ControlName.PROTECTED_BY_BACKUP_PLAN, tagged)] is True
    assert verdicts[(ControlName.PROTECTED_BY_BACKUP_PLAN, untagged)] is False
    assert verdicts[(ControlName.LAST_RECOVERY_POINT_CREATED, tagged)] is True
    assert verdicts[(ControlName.LAST_RECOVERY_POINT_CREATED, untagged)] is False
    assert verdicts[(ControlName.RECOVERY_POINT_MINIMUM_RETENTION, untagged)] is False
    plan_verdicts = [r for r in results if r.control == ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION]
    assert [r.compliant for r in plan_verdicts] == [True]
    bad = [evaluation_to_aws(item) for item in findings(results)]
    assert {row["ResourceArn"] for row in bad} == {untagged}
    assert all(row["ComplianceStatus"] == "NON_COMPLIANT" and row["Reason"] for row in bad)

    # a day later the tagged resource's point is stale too
    clock.advance(timedelta(days=1))
    later = evaluate_controls(context, [ControlSpec(ControlName.LAST_RECOVERY_POINT_CREATED)])
    assert not any(r.compliant for r in later)


def test_vault_policy_and_scope(context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    put_backup_vault_access_policy(
        context,
        "main",
        policy=json.dumps({"Statement": [DENY_RECOVERY_POINT_CHANGES]}),
    )
    create_backup_vault(context, "open")
    results = evaluate_controls(context, [ControlSpec(ControlName.MANUAL_DELETION_DISABLED)])
    assert {r.resource_arn.rsplit(":", 1)[1]: r.compliant for r in results} == {"main": True, "open": False}
    _resource(context, "a", {"team": "db"})
    _resource(context, "b", {"team": "web"})
    scoped = evaluate_controls(
        context, [ControlSpec(ControlName.PROTECTED_BY_BACKUP_PLAN, scope=ControlScope(tags={"team": "db"}))]
    )
    assert [r.resource_arn for r in scoped] == [FILES.format("a")]
    assert len(gather_facts(context).resources) == 2
