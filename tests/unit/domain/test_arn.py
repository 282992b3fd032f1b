"""ARNs of backvault objects and protected resources: building, parsing, errors."""

from __future__ import annotations

import pytest

from backvault.domain.arn import (
    ArnContext,
    BackupArnKind,
    ResourceType,
    backup_plan_arn,
    backup_vault_arn,
    build_resource_arn,
    framework_arn,
    legal_hold_arn,
    parse_arn,
    parse_backup_arn,
    parse_resource_arn,
    recovery_point_arn,
    report_plan_arn,
    resource_type_of,
    restore_testing_plan_arn,
    split_name_and_id,
)
from backvault.domain.errors import InvalidParameterValueException

CTX = ArnContext()
EU = ArnContext(partition="aws", region="eu-store", account="123456789012")


def test_context_defaults() -> None:
    assert (CTX.partition, CTX.region, CTX.account) == ("aws", "local", "000000000000")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"account": "12345"}, "exactly 12 digits"),
        ({"region": "Local"}, "Region 'Local' is not valid"),
        ({"partition": "AWS"}, "partition 'AWS'"),
    ],
)
def test_context_rejects_bad_parts(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidParameterValueException, match=fragment):
        ArnContext(**kwargs)


def test_backup_object_arns() -> None:
    assert backup_vault_arn(CTX, "Default") == "arn:aws:backup:local:000000000000:backup-vault:Default"
    assert backup_plan_arn(EU, "8F81F553") == "arn:aws:backup:eu-store:123456789012:backup-plan:8F81F553"
    assert recovery_point_arn(CTX, "RP1") == "arn:aws:backup:local:000000000000:recovery-point:RP1"
    assert legal_hold_arn(CTX, "LH1") == "arn:aws:backup:local:000000000000:legal-hold:LH1"
    assert (
        framework_arn(CTX, "daily_checks", "ab12")
        == "arn:aws:backup:local:000000000000:framework:daily_checks-ab12"
    )
    assert report_plan_arn(CTX, "weekly") == "arn:aws:backup:local:000000000000:report-plan:weekly"
    assert (
        restore_testing_plan_arn(CTX, "monthly", "x-1")
        == "arn:aws:backup:local:000000000000:restore-testing-plan:monthly-x-1"
    )


def test_parse_backup_arn_round_trip_and_kind_check() -> None:
    text = "arn:aws:backup:eu-store:123456789012:backup-vault:prod_vault-1"
    parsed = parse_backup_arn(text, BackupArnKind.BACKUP_VAULT)
    assert (parsed.region, parsed.account, parsed.kind, parsed.identifier) == (
        "eu-store",
        "123456789012",
        BackupArnKind.BACKUP_VAULT,
        "prod_vault-1",
    )
    assert str(parsed) == text
    with pytest.raises(
        InvalidParameterValueException, match="expected a backup-vault ARN, got a recovery-point"
    ):
        parse_backup_arn("arn:aws:backup:local:000000000000:recovery-point:RP1", BackupArnKind.BACKUP_VAULT)
    assert split_name_and_id(parse_backup_arn(framework_arn(CTX, "checks", "id-9")).identifier) == (
        "checks",
        "id-9",
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("arn:aws:backup", "expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE"),
        ("urn:aws:backup:local:000000000000:backup-vault:x", "expected arn:PARTITION"),
        ("arn:aws:backup:local:0000:backup-vault:Default", "12 digits"),
        ("arn:aws:backup:local:000000000000:backup-vault:", "expected backup-vault:IDENTIFIER"),
        ("arn:aws:backup:local:000000000000:vault:Default", "unknown resource type 'vault'"),
        ("arn:aws:backup:local:000000000000:backup-vault:a", "not a valid backup vault name"),
        ("arn:aws:backup::000000000000:backup-vault:Default", "region and account are required"),
        ("arn:aws:s3:::bucket", "expected service 'backup'"),
        ("arn:aws:backup:local:000000000000:framework:noid", "expected framework:NAME-ID"),
        ("arn:aws:backup:local:000000000000:backup-vault:my vault", "whitespace"),
    ],
)
def test_malformed_backup_arns(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParameterValueException) as info:
        parse_backup_arn(text)
    assert info.value.code == "InvalidParameterValueException"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("resource_type", "endpoint", "name", "expected"),
    [
        ("Filesystem", "home", "", "arn:aws:backvault:local:000000000000:filesystem:home"),
        (
            "Filesystem",
            "home",
            "alice/docs",
            "arn:aws:backvault:local:000000000000:filesystem:home/alice/docs",
        ),
        ("PostgreSQL", "pg-main", "orders", "arn:aws:backvault:local:000000000000:postgresql:pg-main/orders"),
        ("MySQL", "maria", "shop", "arn:aws:backvault:local:000000000000:mysql:maria/shop"),
        ("SQLite", "apps", "wiki/data.db", "arn:aws:backvault:local:000000000000:sqlite:apps/wiki/data.db"),
        ("Redis", "cache", "", "arn:aws:backvault:local:000000000000:redis:cache"),
        ("Redis", "cache", "3", "arn:aws:backvault:local:000000000000:redis:cache/3"),
        ("S3", None, "my-bucket", "arn:aws:s3:::my-bucket"),
        ("DynamoDB", None, "Orders", "arn:aws:dynamodb:local:000000000000:table/Orders"),
    ],
)
def test_resource_arns_round_trip(resource_type: str, endpoint: str | None, name: str, expected: str) -> None:
    text = build_resource_arn(CTX, resource_type, endpoint, name)
    assert text == expected
    parsed = parse_resource_arn(text)
    assert parsed.resource_type == ResourceType(resource_type)
    assert (parsed.endpoint, parsed.name) == (endpoint, name)
    assert str(parsed) == text
    assert resource_type_of(text) == ResourceType(resource_type)


def test_names_are_percent_encoded_so_wildcards_and_colons_stay_literal() -> None:
    text = build_resource_arn(CTX, ResourceType.FILESYSTEM, "home", "My Docs/a:b*c")
    assert text == "arn:aws:backvault:local:000000000000:filesystem:home/My%20Docs/a%3Ab%2Ac"
    assert parse_resource_arn(text).name == "My Docs/a:b*c"
    # A database name is opaque: its '/' is encoded too.
    db = build_resource_arn(CTX, ResourceType.POSTGRESQL, "pg", "odd/name")
    assert db == "arn:aws:backvault:local:000000000000:postgresql:pg/odd%2Fname"
    assert parse_resource_arn(db).name == "odd/name"


def test_real_aws_shapes_from_other_regions_parse() -> None:
    table = parse_resource_arn("arn:aws:dynamodb:us-east-1:123456789012:table/Music")
    assert (table.region, table.account, table.name) == ("us-east-1", "123456789012", "Music")
    assert parse_resource_arn("arn:aws-cn:s3:::logs.example").partition == "aws-cn"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("arn:aws:s3:::my-bucket/some/key", "not a bucket name"),
        ("arn:aws:s3:us-east-1:123456789012:my-bucket", "region and account must be empty"),
        ("arn:aws:s3:::Upper", "not a bucket name"),
        ("arn:aws:dynamodb:us-east-1:123456789012:table/Music/stream/x", "table/NAME"),
        ("arn:aws:dynamodb:us-east-1:123456789012:index/Music", "table/NAME"),
        ("arn:aws:ec2:us-east-1:123456789012:volume/vol-1", "not a resource backvault can protect"),
        ("arn:aws:backvault:local:000000000000:oracle:db/x", "unknown resource type 'oracle'"),
        ("arn:aws:backvault:local:000000000000:postgresql:pg", "give ENDPOINT/NAME"),
        ("arn:aws:backvault:local:000000000000:filesystem:home/../etc", "'..'"),
        ("arn:aws:backvault:local:000000000000:filesystem:home//x", "empty"),
        ("arn:aws:backvault:local:000000000000:filesystem:-home", "endpoint name"),
        ("arn:aws:backvault:local:000000000000:filesystem:home/a%0Ab", "control characters"),
    ],
)
def test_malformed_resource_arns(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParameterValueException) as info:
        parse_resource_arn(text)
    assert fragment in info.value.message


def test_unknown_resource_type_name() -> None:
    with pytest.raises(InvalidParameterValueException, match="Unknown resource type 'EBS'"):
        build_resource_arn(CTX, "EBS", "x", "y")


def test_generic_parse_keeps_colons_in_the_resource() -> None:
    arn = parse_arn("arn:aws:backvault:local:000000000000:postgresql:pg/db")
    assert (arn.service, arn.resource) == ("backvault", "postgresql:pg/db")
    assert str(arn) == "arn:aws:backvault:local:000000000000:postgresql:pg/db"
