"""Backup selections: create/get/list/delete, domain validation, names, plans that are gone."""

from __future__ import annotations

import pytest
from control_helpers import PG_RESOURCE, ROLE, plan_document, selection_document

from backvault.control.context import ServiceContext
from backvault.control.plans import create_backup_plan, delete_backup_plan
from backvault.control.selections import (
    create_backup_selection,
    delete_backup_selection,
    get_backup_selection,
    list_backup_selections,
    plan_selections,
)
from backvault.control.vaults import create_backup_vault
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    LimitExceededException,
    MissingParameterValueException,
    ResourceNotFoundException,
)
from backvault.domain.selection import selection_matches


@pytest.fixture
def plan_id(context: ServiceContext) -> str:
    """A plan to attach selections to."""
    create_backup_vault(context, "main")
    return str(create_backup_plan(context, plan_document())["BackupPlanId"])


def test_create_get_list_delete(context: ServiceContext, plan_id: str) -> None:
    document = selection_document(
        Resources=["arn:aws:backvault:*:*:postgresql:*"],
        Conditions={"StringNotEquals": [{"ConditionKey": "aws:ResourceTag/env", "ConditionValue": "test"}]},
    )
    created = create_backup_selection(context, plan_id, document, creator_request_id="req-1")
    selection_id = created["SelectionId"]
    assert created == {"SelectionId": selection_id, "BackupPlanId": plan_id, "CreationDate": context.now()}
    got = get_backup_selection(context, plan_id, selection_id)
    assert got["BackupSelection"]["SelectionName"] == "tagged"
    assert got["BackupSelection"]["Resources"] == ["arn:aws:backvault:*:*:postgresql:*"]
    assert got["BackupSelection"]["Conditions"]["StringNotEquals"] == [
        {"ConditionKey": "aws:ResourceTag/env", "ConditionValue": "test"}
    ]
    assert (got["SelectionId"], got["BackupPlanId"], got["CreatorRequestId"]) == (
        selection_id,
        plan_id,
        "req-1",
    )
    assert list_backup_selections(context, plan_id)["BackupSelectionsList"] == [
        {
            "SelectionId": selection_id,
            "SelectionName": "tagged",
            "BackupPlanId": plan_id,
            "CreationDate": context.now(),
            "IamRoleArn": ROLE,
            "CreatorRequestId": "req-1",
        }
    ]
    assert delete_backup_selection(context, plan_id, selection_id) == {}
    assert list_backup_selections(context, plan_id)["BackupSelectionsList"] == []
    with pytest.raises(ResourceNotFoundException):
        get_backup_selection(context, plan_id, selection_id)


def test_stored_selections_evaluate_like_the_original(context: ServiceContext, plan_id: str) -> None:
    create_backup_selection(context, plan_id, selection_document())
    with context.catalog.transaction() as session:
        (selection,) = plan_selections(session, plan_id)
    assert selection_matches(selection, PG_RESOURCE, {"backup": "daily"})
    assert not selection_matches(selection, PG_RESOURCE, {"backup": "weekly"})


def test_names_are_unique_in_a_plan_and_retries_are_idempotent(context: ServiceContext, plan_id: str) -> None:
    first = create_backup_selection(context, plan_id, selection_document(), creator_request_id="req-1")
    assert (
        create_backup_selection(context, plan_id, selection_document(), creator_request_id="req-1") == first
    )
    with pytest.raises(AlreadyExistsException, match="'tagged'"):
        create_backup_selection(context, plan_id, selection_document())
    other_plan = create_backup_plan(context, plan_document("other"))["BackupPlanId"]
    create_backup_selection(context, other_plan, selection_document())  # another plan: fine


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        ({"IamRoleArn": ROLE}, MissingParameterValueException, "SelectionName"),
        (selection_document("bad name"), InvalidParameterValueException, "SelectionName"),
        (selection_document(Resources=["not-an-arn"]), InvalidParameterValueException, "is not an ARN"),
        (
            selection_document(Resources=[f"arn:aws:s3:::bucket-{i}-*" for i in range(31)]),
            LimitExceededException,
            "at most 30 with wildcards",
        ),
        (
            selection_document(
                ListOfTags=[{"ConditionType": "STRINGLIKE", "ConditionKey": "a", "ConditionValue": "b"}]
            ),
            InvalidParameterValueException,
            "STRINGEQUALS",
        ),
    ],
)
def test_invalid_selections_are_refused(
    context: ServiceContext, plan_id: str, document: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        create_backup_selection(context, plan_id, document)
    assert list_backup_selections(context, plan_id)["BackupSelectionsList"] == []


def test_unknown_or_deleted_plans(context: ServiceContext, plan_id: str) -> None:
    with pytest.raises(ResourceNotFoundException):
        create_backup_selection(context, "no-such-plan", selection_document())
    with pytest.raises(ResourceNotFoundException):
        list_backup_selections(context, "no-such-plan")
    selection_id = create_backup_selection(context, plan_id, selection_document())["SelectionId"]
    other_plan = create_backup_plan(context, plan_document("other"))["BackupPlanId"]
    with pytest.raises(ResourceNotFoundException, match="has no selection"):
        get_backup_selection(context, other_plan, selection_id)
    with pytest.raises(ResourceNotFoundException, match="has no selection"):
        delete_backup_selection(context, other_plan, selection_id)
    delete_backup_plan(context, other_plan)
    with pytest.raises(ResourceNotFoundException, match="was deleted"):
        create_backup_selection(context, other_plan, selection_document())


def test_list_pages(context: ServiceContext, plan_id: str) -> None:
    for name in ("s3", "s1", "s2"):
        create_backup_selection(context, plan_id, selection_document(name))
    first = list_backup_selections(context, plan_id, max_results=2)
    second = list_backup_selections(context, plan_id, max_results=2, next_token=first["NextToken"])
    names = [item["SelectionName"] for item in first["BackupSelectionsList"] + second["BackupSelectionsList"]]
    assert names == ["s1", "s2", "s3"]
    assert "NextToken" not in second
