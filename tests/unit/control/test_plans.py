"""Backup plans: AWS shapes, versioning on every update, soft delete, names, vault checks, pagination."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from control_helpers import FakeClock, plan_document, selection_document

from backvault.control.catalog import BackupPlan as PlanRow
from backvault.control.context import ServiceContext
from backvault.control.plans import (
    create_backup_plan,
    delete_backup_plan,
    get_backup_plan,
    list_backup_plan_versions,
    list_backup_plans,
    load_plan,
    update_backup_plan,
)
from backvault.control.selections import create_backup_selection, delete_backup_selection
from backvault.control.vaults import create_backup_vault, list_backup_vaults
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    MissingParameterValueException,
    ResourceNotFoundException,
)
from backvault.domain.plans import BackupPlan

PLAN_ARN_PREFIX = "arn:aws:backup:local:000000000000:backup-plan:"


@pytest.fixture(autouse=True)
def vaults(context: ServiceContext) -> None:
    """Vaults the plans target."""
    create_backup_vault(context, "main")
    create_backup_vault(context, "offsite")


def test_create_and_get_use_aws_shapes(context: ServiceContext) -> None:
    created = create_backup_plan(
        context, plan_document(), backup_plan_tags={"team": "db"}, creator_request_id="r1"
    )
    plan_id = created["BackupPlanId"]
    assert created == {
        "BackupPlanId": plan_id,
        "BackupPlanArn": PLAN_ARN_PREFIX + plan_id,
        "CreationDate": context.now(),
        "VersionId": created["VersionId"],
    }
    base64.urlsafe_b64decode(created["VersionId"])  # AWS-style: base64 of a UUID
    got = get_backup_plan(context, plan_id)
    rule = got["BackupPlan"]["Rules"][0]
    assert set(got) == {
        "BackupPlan",
        "BackupPlanId",
        "BackupPlanArn",
        "VersionId",
        "CreationDate",
        "CreatorRequestId",
    }
    assert (got["VersionId"], got["CreatorRequestId"]) == (created["VersionId"], "r1")
    assert got["BackupPlan"]["BackupPlanName"] == "daily"
    # AWS's defaults are filled in and the rule gets an id.
    assert rule["ScheduleExpression"] == "cron(0 5 ? * * *)"
    assert (rule["StartWindowMinutes"], rule["CompletionWindowMinutes"]) == (480, 10080)
    assert rule["RuleId"]


def test_update_creates_a_new_version_and_keeps_the_old_one(
    context: ServiceContext, clock: FakeClock
) -> None:
    created = create_backup_plan(context, plan_document())
    plan_id, first_version = created["BackupPlanId"], created["VersionId"]
    first_rule_id = get_backup_plan(context, plan_id)["BackupPlan"]["Rules"][0]["RuleId"]
    clock.advance(timedelta(hours=1))
    changed = plan_document(ScheduleExpression="cron(0 3 ? * * *)")
    changed["Rules"].append({"RuleName": "weekly", "TargetBackupVaultName": "offsite"})
    updated = update_backup_plan(context, plan_id, changed)
    assert updated["BackupPlanId"] == plan_id
    assert updated["VersionId"] != first_version
    assert updated["CreationDate"] == clock()

    current = get_backup_plan(context, plan_id)
    assert current["VersionId"] == updated["VersionId"]
    rules = {rule["RuleName"]: rule for rule in current["BackupPlan"]["Rules"]}
    assert rules["nightly"]["ScheduleExpression"] == "cron(0 3 ? * * *)"
    assert rules["nightly"]["RuleId"] == first_rule_id  # same rule name, same rule id
    assert rules["weekly"]["RuleId"] not in (None, first_rule_id)

    old = get_backup_plan(context, plan_id, version_id=first_version)
    assert old["VersionId"] == first_version
    assert old["BackupPlan"]["Rules"][0]["ScheduleExpression"] == "cron(0 5 ? * * *)"
    assert len(old["BackupPlan"]["Rules"]) == 1

    versions = list_backup_plan_versions(context, plan_id)["BackupPlanVersionsList"]
    assert [version["VersionId"] for version in versions] == [updated["VersionId"], first_version]
    assert [version["CreationDate"] for version in versions] == [clock(), clock() - timedelta(hours=1)]
    assert {version["BackupPlanName"] for version in versions} == {"daily"}

    _row, domain_plan = load_plan_in(context, plan_id, first_version)
    assert [rule.rule_id for rule in domain_plan.rules] == [first_rule_id]


def load_plan_in(
    context: ServiceContext, plan_id: str, version_id: str | None = None
) -> tuple[PlanRow, BackupPlan]:
    """Call load_plan inside a transaction."""
    with context.catalog.transaction() as session:
        return load_plan(session, plan_id, version_id)


def test_every_update_gets_a_version_even_when_identical(context: ServiceContext) -> None:
    plan_id = create_backup_plan(context, plan_document())["BackupPlanId"]
    for _ in range(3):
        update_backup_plan(context, plan_id, plan_document())
    versions = list_backup_plan_versions(context, plan_id)["BackupPlanVersionsList"]
    assert len({version["VersionId"] for version in versions}) == 4
    page = list_backup_plan_versions(context, plan_id, max_results=3)
    rest = list_backup_plan_versions(context, plan_id, max_results=3, next_token=page["NextToken"])
    assert [v["VersionId"] for v in page["BackupPlanVersionsList"] + rest["BackupPlanVersionsList"]] == [
        v["VersionId"] for v in versions
    ]


def test_soft_delete(context: ServiceContext, clock: FakeClock) -> None:
    created = create_backup_plan(context, plan_document())
    plan_id = created["BackupPlanId"]
    clock.advance(timedelta(days=1))
    deleted = delete_backup_plan(context, plan_id)
    assert deleted == {
        "BackupPlanId": plan_id,
        "BackupPlanArn": created["BackupPlanArn"],
        "DeletionDate": clock(),
        "VersionId": created["VersionId"],
    }
    # Still readable, with its DeletionDate; hidden from listings unless asked for.
    assert get_backup_plan(context, plan_id)["DeletionDate"] == clock()
    assert list_backup_plans(context)["BackupPlansList"] == []
    listed = list_backup_plans(context, include_deleted=True)["BackupPlansList"]
    assert [(plan["BackupPlanId"], plan["DeletionDate"]) for plan in listed] == [(plan_id, clock())]
    assert list_backup_plan_versions(context, plan_id)["BackupPlanVersionsList"][0]["DeletionDate"] == clock()
    with pytest.raises(ResourceNotFoundException, match="deleted"):
        update_backup_plan(context, plan_id, plan_document())
    with pytest.raises(ResourceNotFoundException, match="already deleted"):
        delete_backup_plan(context, plan_id)
    # The name is free again.
    again = create_backup_plan(context, plan_document())
    assert again["BackupPlanId"] != plan_id


def test_delete_is_refused_while_selections_exist(context: ServiceContext) -> None:
    plan_id = create_backup_plan(context, plan_document())["BackupPlanId"]
    selection_id = create_backup_selection(context, plan_id, selection_document())["SelectionId"]
    with pytest.raises(InvalidRequestException, match="1 selection"):
        delete_backup_plan(context, plan_id)
    assert "DeletionDate" not in get_backup_plan(context, plan_id)
    delete_backup_selection(context, plan_id, selection_id)
    delete_backup_plan(context, plan_id)


def test_plan_names_are_unique_among_live_plans(context: ServiceContext) -> None:
    first = create_backup_plan(context, plan_document("daily"))
    with pytest.raises(AlreadyExistsException, match="'daily' already exists") as raised:
        create_backup_plan(context, plan_document("daily"))
    assert raised.value.to_response_body()["Arn"] == first["BackupPlanArn"]
    other = create_backup_plan(context, plan_document("weekly"))["BackupPlanId"]
    with pytest.raises(AlreadyExistsException):
        update_backup_plan(context, other, plan_document("daily"))
    update_backup_plan(context, other, plan_document("weekly-renamed"))
    names = [plan["BackupPlanName"] for plan in list_backup_plans(context)["BackupPlansList"]]
    assert names == ["daily", "weekly-renamed"]


def test_a_retried_create_returns_the_same_plan(context: ServiceContext) -> None:
    first = create_backup_plan(context, plan_document(), creator_request_id="req-1")
    assert create_backup_plan(context, plan_document(), creator_request_id="req-1") == first
    assert len(list_backup_plans(context)["BackupPlansList"]) == 1


def test_rules_must_target_existing_vaults(context: ServiceContext) -> None:
    with pytest.raises(InvalidParameterValueException, match="'missing' is not a backup vault"):
        create_backup_plan(context, plan_document(vault="missing"))
    good_copy = [{"DestinationBackupVaultArn": "arn:aws:backup:local:000000000000:backup-vault:offsite"}]
    create_backup_plan(context, plan_document("with-copy", CopyActions=good_copy))
    bad_copy = [{"DestinationBackupVaultArn": "arn:aws:backup:eu-west-1:000000000000:backup-vault:offsite"}]
    with pytest.raises(InvalidParameterValueException, match="copy destination"):
        create_backup_plan(context, plan_document("bad-copy", CopyActions=bad_copy))
    assert [plan["BackupPlanName"] for plan in list_backup_plans(context)["BackupPlansList"]] == ["with-copy"]


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        ({"Rules": []}, MissingParameterValueException, "BackupPlanName"),
        ({"BackupPlanName": "p", "Rules": []}, InvalidParameterValueException, "no rules"),
        (plan_document("bad name!"), InvalidParameterValueException, "BackupPlanName"),
        (
            plan_document(ScheduleExpression="cron(*/5 * ? * * *)"),
            InvalidParameterValueException,
            "60 minutes",
        ),
        (
            plan_document(Lifecycle={"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 60}),
            InvalidParameterValueException,
            "90",
        ),
        (plan_document(Unknown=1), InvalidRequestException, "unknown member"),
    ],
)
def test_invalid_plans_are_refused_with_the_domains_errors(
    context: ServiceContext, document: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        create_backup_plan(context, document)
    assert list_backup_plans(context, include_deleted=True)["BackupPlansList"] == []


def test_unknown_plans_and_versions(context: ServiceContext) -> None:
    plan_id = create_backup_plan(context, plan_document())["BackupPlanId"]
    with pytest.raises(ResourceNotFoundException):
        get_backup_plan(context, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(ResourceNotFoundException, match="no version"):
        get_backup_plan(context, plan_id, version_id="bm90LWEtdmVyc2lvbg==")
    other = create_backup_plan(context, plan_document("other"))
    with pytest.raises(ResourceNotFoundException, match="no version"):
        get_backup_plan(context, plan_id, version_id=other["VersionId"])


def test_list_pages_by_name(context: ServiceContext) -> None:
    for name in ("c-plan", "a-plan", "b-plan"):
        create_backup_plan(context, plan_document(name))
    first = list_backup_plans(context, max_results=2)
    second = list_backup_plans(context, max_results=2, next_token=first["NextToken"])
    names = [plan["BackupPlanName"] for plan in first["BackupPlansList"] + second["BackupPlansList"]]
    assert names == ["a-plan", "b-plan", "c-plan"]
    assert "NextToken" not in second
    member = first["BackupPlansList"][0]
    assert set(member) == {"BackupPlanArn", "BackupPlanId", "CreationDate", "VersionId", "BackupPlanName"}
    foreign = list_backup_vaults(context, max_results=1)["NextToken"]  # a token of another listing
    with pytest.raises(
        InvalidParameterValueException, match="NextToken is not a token returned by ListBackupPlans"
    ):
        list_backup_plans(context, next_token=foreign)


def test_advanced_backup_settings_are_returned(context: ServiceContext) -> None:
    document = plan_document()
    document["AdvancedBackupSettings"] = [
        {"ResourceType": "PostgreSQL", "BackupOptions": {"Format": "custom"}}
    ]
    created = create_backup_plan(context, document)
    assert created["AdvancedBackupSettings"] == document["AdvancedBackupSettings"]
    assert (
        get_backup_plan(context, created["BackupPlanId"])["AdvancedBackupSettings"]
        == document["AdvancedBackupSettings"]
    )


def test_scheduled_runs_preview(context: ServiceContext, clock: FakeClock) -> None:
    document = plan_document(ScheduleExpression="cron(0 5 ? * * *)")
    document["Rules"].append(
        {"RuleName": "every-6h", "TargetBackupVaultName": "main", "ScheduleExpression": "rate(6 hours)"}
    )
    plan_id = create_backup_plan(context, document)["BackupPlanId"]
    preview = get_backup_plan(context, plan_id, max_scheduled_runs_preview=4)["ScheduledRunsPreview"]
    times = [run["ExecutionTime"] for run in preview]
    start = clock()  # 2025-05-01 12:00 UTC; rate() counts from the version's creation
    assert times == [
        start + timedelta(hours=6),
        start + timedelta(hours=12),
        start + timedelta(hours=17),
        start + timedelta(hours=18),
    ]
    assert {run["RuleExecutionType"] for run in preview} == {"SNAPSHOTS"}
    assert "ScheduledRunsPreview" not in get_backup_plan(context, plan_id)
    with pytest.raises(InvalidParameterValueException, match="MaxScheduledRunsPreview"):
        get_backup_plan(context, plan_id, max_scheduled_runs_preview=11)
