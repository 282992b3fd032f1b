"""BackupSelection matching truth tables and validation."""

from __future__ import annotations

from typing import Any

import pytest

from backvault.domain.errors import (
    BackupServiceError,
    InvalidParameterValueException,
    InvalidRequestException,
    LimitExceededException,
    MissingParameterValueException,
)
from backvault.domain.selection import Selection, selection_matches, wildcard_match

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
PG_ORDERS = "arn:aws:backvault:local:000000000000:postgresql:prod-pg/orders"
PG_TEST = "arn:aws:backvault:local:000000000000:postgresql:test-pg/orders"
HOME = "arn:aws:backvault:local:000000000000:filesystem:home/alice"
BUCKET = "arn:aws:s3:::media-prod"
TABLE = "arn:aws:dynamodb:local:000000000000:table/Orders"


def selection(**members: Any) -> Selection:
    return Selection.from_aws({"SelectionName": "s1", "IamRoleArn": ROLE, **members})


def tag(key: str, value: str) -> dict[str, str]:
    return {"ConditionType": "STRINGEQUALS", "ConditionKey": key, "ConditionValue": value}


def cond(key: str, value: str) -> dict[str, str]:
    return {"ConditionKey": key, "ConditionValue": value}


@pytest.mark.parametrize(
    ("members", "arn", "tags", "expected"),
    [
        # Resources alone: OR over patterns, * anywhere.
        ({"Resources": ["*"]}, BUCKET, {}, True),
        ({"Resources": [PG_ORDERS]}, PG_ORDERS, {}, True),
        ({"Resources": [PG_ORDERS]}, PG_TEST, {}, False),
        ({"Resources": ["arn:aws:backvault:*:*:postgresql:prod-*/*"]}, PG_ORDERS, {}, True),
        ({"Resources": ["arn:aws:backvault:*:*:postgresql:prod-*/*"]}, PG_TEST, {}, False),
        ({"Resources": ["arn:aws:s3:::*"]}, BUCKET, {}, True),
        ({"Resources": ["arn:aws:s3:::*"]}, TABLE, {}, False),
        ({"Resources": ["arn:aws:s3:::*", "arn:aws:dynamodb:*:*:table/*"]}, TABLE, {}, True),
        ({"Resources": ["arn:aws:backvault:local:000000000000:filesystem:home*"]}, HOME, {}, True),
        ({"Resources": ["arn:aws:s3:::MEDIA-*"]}, BUCKET, {}, False),  # case-sensitive
        # NotResources wins over everything.
        ({"Resources": ["*"], "NotResources": ["arn:aws:s3:::*"]}, BUCKET, {}, False),
        ({"Resources": ["*"], "NotResources": ["arn:aws:s3:::*"]}, TABLE, {}, True),
        ({"NotResources": [PG_TEST]}, PG_ORDERS, {}, True),  # no Resources/ListOfTags: start from all
        ({"NotResources": [PG_TEST]}, PG_TEST, {}, False),
        (
            {"ListOfTags": [tag("backup", "daily")], "NotResources": [BUCKET]},
            BUCKET,
            {"backup": "daily"},
            False,
        ),
        # ListOfTags: OR over entries, exact values.
        ({"ListOfTags": [tag("backup", "daily")]}, BUCKET, {"backup": "daily"}, True),
        ({"ListOfTags": [tag("backup", "daily")]}, BUCKET, {"backup": "Daily"}, False),
        ({"ListOfTags": [tag("backup", "daily")]}, BUCKET, {}, False),
        ({"ListOfTags": [tag("backup", "daily"), tag("tier", "gold")]}, BUCKET, {"tier": "gold"}, True),
        ({"ListOfTags": [tag("aws:ResourceTag/backup", "daily")]}, BUCKET, {"backup": "daily"}, True),
        # Resources OR ListOfTags.
        ({"Resources": [PG_ORDERS], "ListOfTags": [tag("backup", "yes")]}, BUCKET, {"backup": "yes"}, True),
        ({"Resources": [PG_ORDERS], "ListOfTags": [tag("backup", "yes")]}, PG_ORDERS, {}, True),
        ({"Resources": [PG_ORDERS], "ListOfTags": [tag("backup", "yes")]}, PG_TEST, {}, False),
        # Conditions: AND, and AND with the rest.
        (
            {"Resources": ["*"], "Conditions": {"StringEquals": [cond("aws:ResourceTag/backup", "true")]}},
            TABLE,
            {"backup": "true"},
            True,
        ),
        (
            {"Resources": ["*"], "Conditions": {"StringEquals": [cond("aws:ResourceTag/backup", "true")]}},
            TABLE,
            {"backup": "false"},
            False,
        ),
        (
            {
                "Resources": ["arn:aws:backvault:*:*:postgresql:*", "arn:aws:s3:::*"],
                "Conditions": {
                    "StringEquals": [
                        cond("aws:ResourceTag/backup", "true"),
                        cond("aws:ResourceTag/stage", "prod"),
                    ]
                },
            },
            PG_ORDERS,
            {"backup": "true", "stage": "prod"},
            True,
        ),
        (
            {
                "Resources": ["arn:aws:backvault:*:*:postgresql:*", "arn:aws:s3:::*"],
                "Conditions": {
                    "StringEquals": [
                        cond("aws:ResourceTag/backup", "true"),
                        cond("aws:ResourceTag/stage", "prod"),
                    ]
                },
            },
            PG_ORDERS,
            {"backup": "true", "stage": "dev"},
            False,
        ),
        (
            {
                "Resources": ["arn:aws:backvault:*:*:postgresql:*"],
                "Conditions": {"StringEquals": [cond("aws:ResourceTag/backup", "true")]},
            },
            TABLE,
            {"backup": "true"},
            False,
        ),
        (
            {
                "ListOfTags": [tag("team", "a")],
                "Conditions": {"StringEquals": [cond("aws:ResourceTag/env", "prod")]},
            },
            BUCKET,
            {"team": "a", "env": "dev"},
            False,
        ),
        # Conditions alone start from every resource.
        (
            {"Conditions": {"StringEquals": [cond("aws:ResourceTag/backup", "true")]}},
            HOME,
            {"backup": "true"},
            True,
        ),
        ({"Conditions": {"StringEquals": [cond("aws:ResourceTag/backup", "true")]}}, HOME, {}, False),
        # Each operator, including a missing tag.
        (
            {"Conditions": {"StringNotEquals": [cond("aws:ResourceTag/env", "dev")]}},
            HOME,
            {"env": "prod"},
            True,
        ),
        (
            {"Conditions": {"StringNotEquals": [cond("aws:ResourceTag/env", "dev")]}},
            HOME,
            {"env": "dev"},
            False,
        ),
        ({"Conditions": {"StringNotEquals": [cond("aws:ResourceTag/env", "dev")]}}, HOME, {}, True),
        (
            {"Conditions": {"StringLike": [cond("aws:ResourceTag/env", "prod*")]}},
            HOME,
            {"env": "production"},
            True,
        ),
        (
            {"Conditions": {"StringLike": [cond("aws:ResourceTag/env", "*rod*")]}},
            HOME,
            {"env": "production"},
            True,
        ),
        (
            {"Conditions": {"StringLike": [cond("aws:ResourceTag/env", "prod*")]}},
            HOME,
            {"env": "preprod"},
            False,
        ),
        ({"Conditions": {"StringLike": [cond("aws:ResourceTag/env", "*")]}}, HOME, {}, False),
        ({"Conditions": {"StringLike": [cond("aws:ResourceTag/env", "*")]}}, HOME, {"env": ""}, True),
        (
            {"Conditions": {"StringNotLike": [cond("aws:ResourceTag/env", "dev*")]}},
            HOME,
            {"env": "develop"},
            False,
        ),
        (
            {"Conditions": {"StringNotLike": [cond("aws:ResourceTag/env", "dev*")]}},
            HOME,
            {"env": "prod"},
            True,
        ),
        ({"Conditions": {"StringNotLike": [cond("aws:ResourceTag/env", "dev*")]}}, HOME, {}, True),
        (
            {"Conditions": {"StringEquals": [cond("aws:ResourceTag/Env", "prod")]}},
            HOME,
            {"env": "prod"},
            False,
        ),
        # Nothing specified: AWS selects every supported resource.
        ({}, TABLE, {}, True),
    ],
)
def test_truth_table(members: dict[str, Any], arn: str, tags: dict[str, str], expected: bool) -> None:
    assert selection_matches(selection(**members), arn, tags) is expected


def test_wildcards() -> None:
    assert wildcard_match("a*c", "abbbc")
    assert wildcard_match("a*c", "ac")
    assert not wildcard_match("a*c", "acb")
    assert wildcard_match("a.b", "a.b")
    assert not wildcard_match("a.b", "axb")  # '.' is literal
    assert not wildcard_match("a?c", "abc")  # only * is a wildcard
    assert wildcard_match("*:table/*", "arn:aws:dynamodb:r:000000000000:table/x")


def test_round_trip_through_aws_shape() -> None:
    original = selection(
        Resources=["arn:aws:s3:::*"],
        NotResources=[BUCKET],
        ListOfTags=[tag("backup", "daily")],
        Conditions={"StringLike": [cond("aws:ResourceTag/env", "prod*")]},
    )
    shape = original.to_aws()
    assert shape["Conditions"] == {
        "StringEquals": [],
        "StringNotEquals": [],
        "StringLike": [{"ConditionKey": "aws:ResourceTag/env", "ConditionValue": "prod*"}],
        "StringNotLike": [],
    }
    assert Selection.from_aws(shape) == original


@pytest.mark.parametrize(
    ("members", "error", "fragment"),
    [
        ({"SelectionName": "bad name"}, InvalidParameterValueException, "SelectionName 'bad name'"),
        ({"SelectionName": "x" * 51}, InvalidParameterValueException, "1-50"),
        ({"SelectionName": None}, MissingParameterValueException, "SelectionName is required"),
        ({"IamRoleArn": None}, MissingParameterValueException, "IamRoleArn is required"),
        ({"IamRoleArn": 7}, InvalidRequestException, "must be a string"),
        ({"Resources": "arn:aws:s3:::*"}, InvalidRequestException, "must be a list"),
        ({"Resources": ["my-bucket"]}, InvalidParameterValueException, "is not an ARN"),
        (
            {"ListOfTags": [{"ConditionType": "STRINGLIKE", "ConditionKey": "a", "ConditionValue": "b"}]},
            InvalidParameterValueException,
            "only supports STRINGEQUALS",
        ),
        (
            {"ListOfTags": [{"ConditionType": "STRINGEQUALS", "ConditionKey": "a"}]},
            MissingParameterValueException,
            "",
        ),
        ({"Conditions": {"StringMatches": []}}, InvalidRequestException, "unknown member(s) StringMatches"),
        (
            {"Conditions": {"StringEquals": [cond("aws:SourceIp", "1.2.3.4")]}},
            InvalidParameterValueException,
            "aws:ResourceTag/KEY",
        ),
        (
            {"Conditions": {"StringEquals": [cond("aws:ResourceTag/", "x")]}},
            InvalidParameterValueException,
            "",
        ),
        ({"Selection": "typo"}, InvalidRequestException, "unknown member(s) Selection"),
        (
            {"Resources": [f"arn:aws:s3:::bucket-{i}*" for i in range(31)]},
            LimitExceededException,
            "at most 30 with wildcards",
        ),
        ({"Resources": [f"arn:aws:s3:::bucket-{i}" for i in range(501)]}, LimitExceededException, "501 ARNs"),
    ],
)
def test_validation_errors(members: dict[str, Any], error: type[BackupServiceError], fragment: str) -> None:
    body = {"SelectionName": "s1", "IamRoleArn": ROLE, **members}
    with pytest.raises(error) as info:
        Selection.from_aws(body)
    assert info.value.code == error.code
    assert fragment in info.value.message


def test_limits_allow_exactly_30_wildcards_and_500_arns() -> None:
    selection(Resources=[f"arn:aws:s3:::bucket-{i}*" for i in range(30)])
    selection(Resources=[f"arn:aws:s3:::bucket-{i}" for i in range(500)])
