"""Restore testing plans and selections: AWS's shapes, defaults, limits, idempotency and errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import botocore.session
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from control_helpers import ROLE, FakeClock
from sqlalchemy import MetaData, select

from backvault.control.catalog.base import Base
from backvault.control.catalog.restore_testing_models import RestoreTestingPlan
from backvault.control.context import ServiceContext
from backvault.control.restore_testing import (
    create_restore_testing_plan,
    create_restore_testing_selection,
    delete_restore_testing_plan,
    delete_restore_testing_selection,
    describe_validation_hook,
    get_restore_testing_plan,
    get_restore_testing_selection,
    list_restore_testing_plans,
    list_restore_testing_selections,
    update_restore_testing_plan,
    update_restore_testing_selection,
)
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    MissingParameterValueException,
    ResourceNotFoundException,
)

VAULT_ARN = "arn:aws:backup:local:000000000000:backup-vault:main"
PHOTOS = "arn:aws:backvault:local:000000000000:filesystem:files/photos"
_MODEL = botocore.session.get_session().get_service_model("backup")


def plan(name: str = "nightly", **members: Any) -> dict[str, Any]:
    """A RestoreTestingPlanForCreate; keyword arguments override members."""
    body: dict[str, Any] = {
        "RestoreTestingPlanName": name,
        "ScheduleExpression": "cron(0 5 ? * * *)",
        "RecoveryPointSelection": {
            "Algorithm": "LATEST_WITHIN_WINDOW",
            "IncludeVaults": ["*"],
            "RecoveryPointTypes": ["SNAPSHOT"],
        },
    }
    body.update(members)
    return body


def selection(name: str = "files", **members: Any) -> dict[str, Any]:
    """A RestoreTestingSelectionForCreate; keyword arguments override members."""
    body: dict[str, Any] = {
        "RestoreTestingSelectionName": name,
        "ProtectedResourceType": "Filesystem",
        "IamRoleArn": ROLE,
        "ProtectedResourceArns": ["*"],
    }
    body.update(members)
    return body


def assert_shape(operation: str, answer: dict[str, Any]) -> None:
    """The answer has exactly the members AWS's output shape allows, and its required ones."""
    shape = _MODEL.operation_model(operation).output_shape
    assert set(answer) <= set(shape.members), set(answer) - set(shape.members)
    assert set(shape.required_members) <= set(answer)


def test_restore_testing_tables_match_their_migration(context: ServiceContext) -> None:
    mine = MetaData()
    for table in Base.metadata.sorted_tables:
        if table.name.startswith("restore_test"):
            table.to_metadata(mine)
    assert len(mine.tables) == 3
    with context.catalog.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), mine)
    touching = [entry for entry in diff if "restore_test" in repr(entry)]
    # Tables of other modules show up as "remove_table": only ours matter here.
    assert [
        entry for entry in touching if not (isinstance(entry, tuple) and entry[0] == "remove_table")
    ] == []


def test_create_get_and_list_plans_with_aws_defaults(context: ServiceContext, clock: FakeClock) -> None:
    created = create_restore_testing_plan(context, plan(), tags={"team": "ops"}, creator_request_id="r-1")
    assert_shape("CreateRestoreTestingPlan", created)
    assert created["RestoreTestingPlanName"] == "nightly"
    assert created["RestoreTestingPlanArn"].startswith(
        "arn:aws:backup:local:000000000000:restore-testing-plan:nightly-"
    )
    assert created["CreationTime"] == clock.current

    got = get_restore_testing_plan(context, "nightly")
    assert_shape("GetRestoreTestingPlan", got)
    body = got["RestoreTestingPlan"]
    assert body == {
        "CreationTime": clock.current,
        "CreatorRequestId": "r-1",
        "RecoveryPointSelection": {
            "Algorithm": "LATEST_WITHIN_WINDOW",
            "ExcludeVaults": [],
            "IncludeVaults": ["*"],
            "RecoveryPointTypes": ["SNAPSHOT"],
            "SelectionWindowDays": 30,
        },
        "RestoreTestingPlanArn": created["RestoreTestingPlanArn"],
        "RestoreTestingPlanName": "nightly",
        "ScheduleExpression": "cron(0 5 ? * * *)",
        "ScheduleExpressionTimezone": "Etc/UTC",
        "StartWindowHours": 24,
    }
    # The same CreatorRequestId is a retry; another one is a conflict.
    assert create_restore_testing_plan(context, plan(), creator_request_id="r-1") == created
    with pytest.raises(AlreadyExistsException):
        create_restore_testing_plan(context, plan(), creator_request_id="r-2")

    create_restore_testing_plan(
        context,
        plan(
            "a_weekly",
            ScheduleExpression="cron(0 3 ? * SUN *)",
            ScheduleExpressionTimezone="Europe/Berlin",
            StartWindowHours=3,
        ),
    )
    listed = list_restore_testing_plans(context)
    assert_shape("ListRestoreTestingPlans", listed)
    assert [member["RestoreTestingPlanName"] for member in listed["RestoreTestingPlans"]] == [
        "a_weekly",
        "nightly",
    ]
    assert listed["RestoreTestingPlans"][0]["ScheduleExpressionTimezone"] == "Europe/Berlin"
    first = list_restore_testing_plans(context, max_results=1)
    second = list_restore_testing_plans(context, next_token=first["NextToken"])
    assert [
        m["RestoreTestingPlanName"] for m in first["RestoreTestingPlans"] + second["RestoreTestingPlans"]
    ] == [
        "a_weekly",
        "nightly",
    ]
    with context.catalog.transaction() as session:
        row = session.scalars(select(RestoreTestingPlan).where(RestoreTestingPlan.name == "nightly")).one()
        assert row.tags == {"team": "ops"}


PLAN_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"RestoreTestingPlanName": "has-dash"}, InvalidParameterValueException, "letter, digit or underscore"),
    ({"RestoreTestingPlanName": "x" * 51}, InvalidParameterValueException, "1-50"),
    ({"ScheduleExpression": "every day"}, InvalidParameterValueException, "ScheduleExpression"),
    ({"ScheduleExpression": None}, MissingParameterValueException, "ScheduleExpression"),
    ({"ScheduleExpressionTimezone": "Mars/Olympus"}, InvalidParameterValueException, "time zone"),
    ({"StartWindowHours": 0}, InvalidParameterValueException, "between 1 and 168"),
    ({"StartWindowHours": 169}, InvalidParameterValueException, "between 1 and 168"),
    ({"Unknown": 1}, InvalidRequestException, "Unknown"),
    ({"RecoveryPointSelection": None}, MissingParameterValueException, "RecoveryPointSelection"),
]
POINT_SELECTION_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"Algorithm": "OLDEST"}, "LATEST_WITHIN_WINDOW or RANDOM_WITHIN_WINDOW"),
    ({"IncludeVaults": []}, "at least one vault"),
    ({"IncludeVaults": ["main"]}, "backup vault ARN"),
    ({"ExcludeVaults": ["arn:aws:backup:local:000000000000:backup-plan:x"]}, "backup vault ARN"),
    ({"RecoveryPointTypes": ["IMAGE"]}, "SNAPSHOT and/or CONTINUOUS"),
    ({"RecoveryPointTypes": []}, "SNAPSHOT and/or CONTINUOUS"),
    ({"SelectionWindowDays": 0}, "between 1 and 365"),
    ({"SelectionWindowDays": 366}, "between 1 and 365"),
]


def with_members(body: dict[str, Any], members: dict[str, Any]) -> dict[str, Any]:
    """A copy of body with members set (None: removed)."""
    changed = {**body, **members}
    return {key: value for key, value in changed.items() if value is not None}


def test_plan_validation_errors(context: ServiceContext) -> None:
    for members, error, fragment in PLAN_ERRORS:
        with pytest.raises(error, match=fragment):
            create_restore_testing_plan(context, with_members(plan(), members))
    for choice, fragment in POINT_SELECTION_ERRORS:
        body = plan()
        body["RecoveryPointSelection"] = {**body["RecoveryPointSelection"], **choice}
        with pytest.raises((InvalidParameterValueException, MissingParameterValueException), match=fragment):
            create_restore_testing_plan(context, body)
    assert list_restore_testing_plans(context) == {"RestoreTestingPlans": []}


def test_update_plan_and_delete_only_without_selections(context: ServiceContext, clock: FakeClock) -> None:
    created = create_restore_testing_plan(context, plan())
    clock.advance(timedelta(hours=1))
    updated = update_restore_testing_plan(
        context,
        "nightly",
        {
            "ScheduleExpression": "cron(30 1 ? * * *)",
            "StartWindowHours": 2,
            "RecoveryPointSelection": {
                "Algorithm": "RANDOM_WITHIN_WINDOW",
                "IncludeVaults": [VAULT_ARN],
                "ExcludeVaults": ["arn:aws:backup:local:000000000000:backup-vault:old*"],
                "RecoveryPointTypes": ["SNAPSHOT"],
                "SelectionWindowDays": 7,
            },
        },
    )
    assert_shape("UpdateRestoreTestingPlan", updated)
    assert updated["UpdateTime"] == clock.current
    assert updated["CreationTime"] == created["CreationTime"]
    body = get_restore_testing_plan(context, "nightly")["RestoreTestingPlan"]
    assert body["ScheduleExpression"] == "cron(30 1 ? * * *)"
    assert body["StartWindowHours"] == 2
    assert body["LastUpdateTime"] == clock.current
    assert body["RecoveryPointSelection"]["Algorithm"] == "RANDOM_WITHIN_WINDOW"
    assert body["RecoveryPointSelection"]["SelectionWindowDays"] == 7
    with pytest.raises(InvalidRequestException, match="RestoreTestingPlanName"):
        update_restore_testing_plan(context, "nightly", {"RestoreTestingPlanName": "renamed"})
    with pytest.raises(ResourceNotFoundException):
        update_restore_testing_plan(context, "missing", {"StartWindowHours": 3})

    create_restore_testing_selection(context, "nightly", selection())
    with pytest.raises(InvalidRequestException, match="selection"):
        delete_restore_testing_plan(context, "nightly")
    delete_restore_testing_selection(context, "nightly", "files")
    assert delete_restore_testing_plan(context, "nightly") == {}
    with pytest.raises(ResourceNotFoundException):
        get_restore_testing_plan(context, "nightly")
    # The name is free again.
    create_restore_testing_plan(context, plan())


def test_selections_crud_with_aws_shapes(context: ServiceContext, clock: FakeClock) -> None:
    created_plan = create_restore_testing_plan(context, plan())
    conditions = {
        "StringEquals": [{"Key": "aws:ResourceTag/backup", "Value": "daily"}],
        "StringNotEquals": [{"Key": "aws:ResourceTag/env", "Value": "dev"}],
    }
    created = create_restore_testing_selection(
        context,
        "nightly",
        selection(
            ProtectedResourceType="filesystem",
            ProtectedResourceConditions=conditions,
            RestoreMetadataOverrides={"EndpointName": "scratch"},
            ValidationWindowHours=2,
        ),
        creator_request_id="s-1",
    )
    assert_shape("CreateRestoreTestingSelection", created)
    assert created == {
        "CreationTime": clock.current,
        "RestoreTestingPlanArn": created_plan["RestoreTestingPlanArn"],
        "RestoreTestingPlanName": "nightly",
        "RestoreTestingSelectionName": "files",
    }
    assert (
        create_restore_testing_selection(context, "nightly", selection(), creator_request_id="s-1") == created
    )
    with pytest.raises(AlreadyExistsException):
        create_restore_testing_selection(context, "nightly", selection())

    got = get_restore_testing_selection(context, "nightly", "files")
    assert_shape("GetRestoreTestingSelection", got)
    assert got["RestoreTestingSelection"] == {
        "CreationTime": clock.current,
        "CreatorRequestId": "s-1",
        "IamRoleArn": ROLE,
        "ProtectedResourceArns": ["*"],
        "ProtectedResourceConditions": conditions,
        "ProtectedResourceType": "Filesystem",
        "RestoreMetadataOverrides": {"EndpointName": "scratch"},
        "RestoreTestingPlanName": "nightly",
        "RestoreTestingSelectionName": "files",
        "ValidationWindowHours": 2,
    }

    create_restore_testing_selection(context, "nightly", selection("by_arn", ProtectedResourceArns=[PHOTOS]))
    listed = list_restore_testing_selections(context, "nightly")
    assert_shape("ListRestoreTestingSelections", listed)
    assert [m["RestoreTestingSelectionName"] for m in listed["RestoreTestingSelections"]] == [
        "by_arn",
        "files",
    ]
    assert listed["RestoreTestingSelections"][0]["ValidationWindowHours"] == 0

    clock.advance(timedelta(minutes=5))
    updated = update_restore_testing_selection(
        context, "nightly", "by_arn", {"ValidationWindowHours": 5, "ProtectedResourceArns": ["*"]}
    )
    assert_shape("UpdateRestoreTestingSelection", updated)
    assert updated["UpdateTime"] == clock.current
    body = get_restore_testing_selection(context, "nightly", "by_arn")["RestoreTestingSelection"]
    assert (body["ValidationWindowHours"], body["ProtectedResourceArns"]) == (5, ["*"])
    with pytest.raises(InvalidRequestException, match="ProtectedResourceType"):
        update_restore_testing_selection(context, "nightly", "by_arn", {"ProtectedResourceType": "S3"})

    delete_restore_testing_selection(context, "nightly", "by_arn")
    with pytest.raises(ResourceNotFoundException, match="no selection 'by_arn'"):
        get_restore_testing_selection(context, "nightly", "by_arn")
    with pytest.raises(ResourceNotFoundException, match="plan 'other'"):
        list_restore_testing_selections(context, "other")


SELECTION_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"RestoreTestingSelectionName": "bad name"}, InvalidParameterValueException, "letter, digit"),
    ({"ProtectedResourceType": "EBS"}, InvalidParameterValueException, "not a resource type"),
    ({"ProtectedResourceArns": None}, MissingParameterValueException, "ProtectedResourceArns"),
    ({"ProtectedResourceArns": ["*", PHOTOS]}, InvalidParameterValueException, "not both"),
    ({"ProtectedResourceArns": [PHOTOS] * 31}, InvalidParameterValueException, "at most 30"),
    (
        {"ProtectedResourceArns": ["arn:aws:backvault:local:000000000000:postgresql:pg/orders"]},
        InvalidParameterValueException,
        "PostgreSQL resource",
    ),
    (
        {
            "ProtectedResourceArns": [PHOTOS],
            "ProtectedResourceConditions": {"StringEquals": [{"Key": "aws:ResourceTag/a", "Value": "b"}]},
        },
        InvalidParameterValueException,
        'apply to ProtectedResourceArns \\["\\*"\\] only',
    ),
    (
        {"ProtectedResourceConditions": {"StringEquals": [{"Key": "backup", "Value": "b"}]}},
        InvalidParameterValueException,
        "aws:ResourceTag/KEY",
    ),
    (
        {"ProtectedResourceConditions": {"StringLike": []}},
        InvalidRequestException,
        "StringLike",
    ),
    ({"RestoreMetadataOverrides": {"targetpath": "/etc"}}, InvalidParameterValueException, "scratch"),
    ({"RestoreMetadataOverrides": {"DatabaseName": "prod"}}, InvalidParameterValueException, "scratch"),
    ({"ValidationWindowHours": 169}, InvalidParameterValueException, "between 0 and 168"),
    ({"IamRoleArn": "role"}, InvalidParameterValueException, "ARN"),
]


def test_selection_validation_errors(context: ServiceContext) -> None:
    create_restore_testing_plan(context, plan())
    for members, error, fragment in SELECTION_ERRORS:
        with pytest.raises(error, match=fragment):
            create_restore_testing_selection(context, "nightly", with_members(selection(), members))
    assert list_restore_testing_selections(context, "nightly") == {"RestoreTestingSelections": []}


def test_conditions_alone_select_every_resource_of_the_type(context: ServiceContext) -> None:
    create_restore_testing_plan(context, plan())
    conditions = {"StringEquals": [{"Key": "aws:ResourceTag/backup", "Value": "daily"}]}
    body = selection(ProtectedResourceConditions=conditions)
    del body["ProtectedResourceArns"]
    create_restore_testing_selection(context, "nightly", body)
    got = get_restore_testing_selection(context, "nightly", "files")["RestoreTestingSelection"]
    assert "ProtectedResourceArns" not in got
    assert got["ProtectedResourceConditions"] == conditions
    with pytest.raises(ResourceNotFoundException):
        create_restore_testing_selection(context, "missing", selection())


def test_validation_hooks_are_checked_and_webhook_urls_never_stored_in_clear(context: ServiceContext) -> None:
    secret_url = "https://hooks.example:8443/validate?token=s3cr3t"
    create_restore_testing_plan(context, plan(), validation_hook={"WebhookUrl": secret_url})
    create_restore_testing_selection(
        context,
        "nightly",
        selection(),
        validation_hook={"Command": ["/bin/true", "--x"], "TimeoutSeconds": 5},
    )
    assert describe_validation_hook(context, "nightly") == {
        "TimeoutSeconds": 30,
        "WebhookUrl": "https://hooks.example:8443/...",
    }
    assert describe_validation_hook(context, "nightly", "files") == {
        "TimeoutSeconds": 5,
        "Command": ["/bin/true", "--x"],
    }
    with context.catalog.engine.connect() as connection:
        dumped = repr(list(connection.exec_driver_sql("SELECT * FROM restore_testing_plans")))
    assert "s3cr3t" not in dumped and "hooks.example" in dumped
    # Updating without a hook keeps it; None removes it.
    update_restore_testing_plan(context, "nightly", {"StartWindowHours": 4})
    assert describe_validation_hook(context, "nightly") is not None
    update_restore_testing_plan(context, "nightly", {}, validation_hook=None)
    assert describe_validation_hook(context, "nightly") is None

    bad_hooks: list[tuple[Any, str]] = [
        ({}, "exactly one of"),
        ({"Command": ["/bin/true"], "WebhookUrl": "http://x"}, "exactly one of"),
        ({"Command": []}, "non-empty"),
        ({"WebhookUrl": "ftp://host/x"}, "http"),
        ({"Command": ["/bin/true"], "TimeoutSeconds": 0}, "between 1"),
        ({"Command": ["/bin/true"], "Shell": True}, "Shell"),
    ]
    for hook, fragment in bad_hooks:
        with pytest.raises((InvalidParameterValueException, InvalidRequestException), match=fragment):
            update_restore_testing_selection(context, "nightly", "files", {}, validation_hook=hook)
