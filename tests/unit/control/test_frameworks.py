"""Audit frameworks: AWS-shaped CRUD, validation naming the control and parameter, stored evaluations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from control_helpers import FakeClock, plan_document, selection_document
from sqlalchemy import MetaData, select

from backvault.control.catalog import Catalog, Event, ProtectedResource
from backvault.control.catalog.audit_models import AuditEvaluation
from backvault.control.catalog.base import Base
from backvault.control.context import ServiceContext
from backvault.control.frameworks import (
    FINDING,
    FINDING_RESOLVED,
    create_framework,
    delete_framework,
    describe_framework,
    describe_framework_compliance,
    evaluate_frameworks,
    list_frameworks,
    update_framework,
)
from backvault.control.plans import create_backup_plan
from backvault.control.selections import create_backup_selection
from backvault.control.vaults import create_backup_vault
from backvault.domain.arn import BackupArnKind, parse_backup_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    MissingParameterValueException,
    ResourceNotFoundException,
)

FILES = "arn:aws:backvault:local:000000000000:filesystem:files/{}"
PROTECTED = {"ControlName": "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN"}
RECENT_POINT = {
    "ControlName": "BACKUP_LAST_RECOVERY_POINT_CREATED",
    "ControlInputParameters": [
        {"ParameterName": "recoveryPointAgeUnit", "ParameterValue": "hours"},
        {"ParameterName": "recoveryPointAgeValue", "ParameterValue": "12"},
    ],
    "ControlScope": {"ComplianceResourceTypes": ["Filesystem"], "Tags": {"team": "db"}},
}
AUDIT_TABLES = ("audit_frameworks", "audit_evaluations", "report_plans", "report_jobs")


def add_resource(context: ServiceContext, name: str, tags: dict[str, str]) -> str:
    """Record a discovered filesystem resource (as discovery does) and return its ARN."""
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


def protect_tagged(context: ServiceContext) -> None:
    """A vault and a daily plan selecting resources tagged backup=daily."""
    create_backup_vault(context, "main")
    plan = create_backup_plan(context, plan_document(ScheduleExpression="cron(0 5 ? * * *)"))
    create_backup_selection(context, plan["BackupPlanId"], selection_document())


def statuses(context: ServiceContext, name: str) -> dict[tuple[str, str], str]:
    """The stored verdicts of a framework by (control, resource)."""
    answer = describe_framework_compliance(context, name)
    return {
        (item["ControlName"], item["ResourceArn"]): item["ComplianceStatus"]
        for control in answer["Controls"]
        for item in control["Evaluations"]
    }


def events_of(context: ServiceContext, event_type: str) -> list[Event]:
    """Every event of one type, oldest first."""
    with context.catalog.transaction() as session:
        rows = list(session.scalars(select(Event).where(Event.event_type == event_type).order_by(Event.id)))
        session.expunge_all()
        return rows


def test_framework_crud_in_aws_shapes(context: ServiceContext) -> None:
    created = create_framework(
        context,
        "Daily_Audit",
        [PROTECTED, RECENT_POINT],
        framework_description="What we promise",
        idempotency_token="token-1",
        framework_tags={"owner": "ops"},
    )
    arn = parse_backup_arn(created["FrameworkArn"], BackupArnKind.FRAMEWORK)
    assert arn.identifier.startswith("Daily_Audit-") and created["FrameworkName"] == "Daily_Audit"
    # a retry with the same token is the same framework; another create of the name is refused
    again = create_framework(context, "Daily_Audit", [PROTECTED], idempotency_token="token-1")
    assert again == created
    with pytest.raises(AlreadyExistsException, match="Daily_Audit"):
        create_framework(context, "Daily_Audit", [PROTECTED])

    described = describe_framework(context, "Daily_Audit")
    assert described["FrameworkControls"] == [PROTECTED, RECENT_POINT]
    assert described["DeploymentStatus"] == "COMPLETED" and described["FrameworkStatus"] == "ACTIVE"
    assert described["FrameworkDescription"] == "What we promise"
    assert described["CreationTime"] == context.now() and described["IdempotencyToken"] == "token-1"

    create_framework(context, "Another", [PROTECTED])
    listed = list_frameworks(context)["Frameworks"]
    assert [(item["FrameworkName"], item["NumberOfControls"]) for item in listed] == [
        ("Another", 1),
        ("Daily_Audit", 2),
    ]
    first_page = list_frameworks(context, max_results=1)
    assert [item["FrameworkName"] for item in first_page["Frameworks"]] == ["Another"]
    second_page = list_frameworks(context, max_results=1, next_token=first_page["NextToken"])
    assert [item["FrameworkName"] for item in second_page["Frameworks"]] == ["Daily_Audit"]

    updated = update_framework(
        context, "Daily_Audit", framework_controls=[RECENT_POINT], framework_description="Narrower"
    )
    assert updated["FrameworkArn"] == created["FrameworkArn"]
    described = describe_framework(context, "Daily_Audit")
    assert described["FrameworkControls"] == [RECENT_POINT]
    assert described["FrameworkDescription"] == "Narrower"

    assert delete_framework(context, "Daily_Audit") == {}
    with pytest.raises(ResourceNotFoundException, match="Daily_Audit"):
        describe_framework(context, "Daily_Audit")
    with pytest.raises(ResourceNotFoundException):
        update_framework(context, "Daily_Audit", framework_controls=[PROTECTED])
    assert [item["FrameworkName"] for item in list_frameworks(context)["Frameworks"]] == ["Another"]


@pytest.mark.parametrize(
    ("name", "controls", "error", "message"),
    [
        ("bad-name", [PROTECTED], InvalidParameterValueException, "start with a letter"),
        ("Audit", [], InvalidParameterValueException, "at least one control"),
        ("Audit", [{"ControlName": "NO_SUCH_CONTROL"}], InvalidParameterValueException, "NO_SUCH_CONTROL"),
        (
            "Audit",
            [
                {
                    "ControlName": "BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK",
                    "ControlInputParameters": [{"ParameterName": "retentionDays", "ParameterValue": "7"}],
                }
            ],
            InvalidParameterValueException,
            "BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK has no parameter 'retentionDays'",
        ),
        (
            "Audit",
            [
                {
                    "ControlName": "BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK",
                    "ControlInputParameters": [
                        {"ParameterName": "requiredRetentionDays", "ParameterValue": "a week"}
                    ],
                }
            ],
            InvalidParameterValueException,
            "requiredRetentionDays of BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK must be a number",
        ),
        ("Audit", [PROTECTED, PROTECTED], InvalidParameterValueException, "appears twice"),
        (
            "Audit",
            [{**PROTECTED, "ControlScope": {"Tags": {"a": "1", "b": "2"}}}],
            InvalidParameterValueException,
            "at most one tag",
        ),
        (
            "Audit",
            [{**PROTECTED, "ControlScope": {"ComplianceResourceTypes": ["EBS"]}}],
            InvalidParameterValueException,
            "unknown resource type.* EBS",
        ),
        ("Audit", [{"ControlInputParameters": []}], MissingParameterValueException, "ControlName"),
        ("Audit", [{**PROTECTED, "Scope": {}}], InvalidRequestException, "unknown member.*Scope"),
    ],
)
def test_bad_frameworks_are_refused_naming_the_problem(
    context: ServiceContext, name: str, controls: list[Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        create_framework(context, name, controls)
    assert list_frameworks(context)["Frameworks"] == []


def test_evaluations_are_stored_and_follow_changes(context: ServiceContext, clock: FakeClock) -> None:
    protect_tagged(context)
    tagged = add_resource(context, "tagged", {"backup": "daily"})
    untagged = add_resource(context, "untagged", {"team": "db"})
    create_framework(context, "Coverage", [PROTECTED])

    # creating the framework evaluated it
    assert statuses(context, "Coverage") == {
        (PROTECTED["ControlName"], tagged): "COMPLIANT",
        (PROTECTED["ControlName"], untagged): "NON_COMPLIANT",
    }
    compliance = describe_framework_compliance(context, "Coverage")
    assert compliance["ComplianceStatus"] == "NON_COMPLIANT"
    assert compliance["LastEvaluationTime"] == context.now()
    [control] = compliance["Controls"]
    assert (control["CompliantResourceCount"], control["NonCompliantResourceCount"]) == (1, 1)
    reasons = {item["ResourceArn"]: item["Reason"] for item in control["Evaluations"]}
    assert reasons[untagged] == "no backup plan selects this resource"
    [finding] = events_of(context, FINDING)
    assert finding.resource_arn == untagged and finding.detail["FrameworkName"] == "Coverage"
    opened = context.now()

    # nothing changed: the tick does not evaluate again
    clock.advance(timedelta(minutes=5))
    assert evaluate_frameworks(context) == []

    # a plan change is an event: the next tick re-evaluates, and the finding is resolved
    plan = create_backup_plan(context, plan_document(name="team_db", ScheduleExpression="cron(0 6 ? * * *)"))
    create_backup_selection(
        context,
        plan["BackupPlanId"],
        selection_document(
            name="team",
            ListOfTags=[{"ConditionType": "STRINGEQUALS", "ConditionKey": "team", "ConditionValue": "db"}],
        ),
    )
    clock.advance(timedelta(minutes=2))
    [summary] = evaluate_frameworks(context)
    assert (summary["FrameworkName"], summary["CompliantCount"], summary["NonCompliantCount"]) == (
        "Coverage",
        2,
        0,
    )
    assert set(statuses(context, "Coverage").values()) == {"COMPLIANT"}
    [resolved] = events_of(context, FINDING_RESOLVED)
    assert resolved.resource_arn == untagged
    with context.catalog.transaction() as session:
        row = session.scalars(select(AuditEvaluation).where(AuditEvaluation.resource_arn == untagged)).one()
        assert row.status_since == context.now() > opened
        assert row.evaluation_time == context.now()

    # the audit's own events do not trigger evaluations; time alone does, after max_age
    clock.advance(timedelta(minutes=5))
    assert evaluate_frameworks(context) == []
    clock.advance(timedelta(minutes=15))
    assert [item["FrameworkName"] for item in evaluate_frameworks(context)] == ["Coverage"]
    assert len(events_of(context, FINDING)) == 1  # an unchanged verdict records nothing new


def test_scope_and_time_based_controls(context: ServiceContext, clock: FakeClock) -> None:
    database = add_resource(context, "database", {"team": "db"})
    add_resource(context, "web", {"team": "web"})
    create_framework(
        context,
        "Scoped",
        [
            RECENT_POINT,
            {**PROTECTED, "ControlScope": {"ComplianceResourceIds": [FILES.format("web*")]}},
        ],
    )
    verdicts = statuses(context, "Scoped")
    assert verdicts == {
        (RECENT_POINT["ControlName"], database): "NON_COMPLIANT",
        (PROTECTED["ControlName"], FILES.format("web")): "NON_COMPLIANT",
    }
    compliance = describe_framework_compliance(context, "Scoped")
    reasons = [item["Reason"] for control in compliance["Controls"] for item in control["Evaluations"]]
    assert "no recovery point was ever created" in reasons

    # a resource that leaves the scope loses its stored verdict
    update_framework(context, "Scoped", framework_controls=[RECENT_POINT])
    assert list(statuses(context, "Scoped")) == [(RECENT_POINT["ControlName"], database)]
    # the same token again is a no-op, even with other controls
    update_framework(context, "Scoped", framework_controls=[PROTECTED], idempotency_token="t1")
    update_framework(context, "Scoped", framework_controls=[RECENT_POINT], idempotency_token="t1")
    assert describe_framework(context, "Scoped")["FrameworkControls"] == [PROTECTED]


def test_deleting_a_framework_removes_its_evaluations(context: ServiceContext) -> None:
    add_resource(context, "lonely", {})
    create_framework(context, "Gone", [PROTECTED])
    with context.catalog.transaction() as session:
        assert len(list(session.scalars(select(AuditEvaluation)))) == 1
    delete_framework(context, "Gone")
    with context.catalog.transaction() as session:
        assert list(session.scalars(select(AuditEvaluation))) == []
    with pytest.raises(ResourceNotFoundException):
        delete_framework(context, "Gone")


def test_audit_migration_matches_the_models(catalog: Catalog) -> None:
    audit_only = MetaData()
    for name in AUDIT_TABLES:
        Base.metadata.tables[name].to_metadata(audit_only)
    with catalog.engine.connect() as connection:
        migration = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = [
            change
            for change in compare_metadata(migration, audit_only)
            if not (change[0] == "remove_table" and change[1].name not in AUDIT_TABLES)
            and not (change[0] == "remove_index" and change[1].table.name not in AUDIT_TABLES)
        ]
    assert differences == []
