"""The rest-json protocol against botocore itself: what botocore sends we parse back exactly, what we
answer botocore parses back exactly, for every operation of the AWS Backup model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.utils import percent_encode_sequence

from backvault.api.protocol import UnknownOperationException, backup_protocol, serialize_error
from backvault.api.wire_values import SerializationException, parse_timestamp
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    MissingParameterValueException,
)

MODEL = botocore.session.get_session().get_service_model("backup")
OPERATIONS = sorted(MODEL.operation_names)
# An ARN exercises the label encoding: its ':' and '/' must survive the path.
SAMPLE_ARN = "arn:aws:backvault:local:000000000000:filesystem:home/alice docs"
SAMPLE_TIME = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def sample(shape: Any, name: str, depth: int = 0) -> Any:
    """Return a value of the shape's type, with every member filled in (to a depth)."""
    kind = shape.type_name
    if kind == "structure":
        if depth > 3:
            return {
                key: sample(member, key, depth + 1)
                for key, member in shape.members.items()
                if key in shape.required_members
            }
        return {key: sample(member, key, depth + 1) for key, member in shape.members.items()}
    if kind == "list":
        return [sample(shape.member, name, depth + 1)]
    if kind == "map":
        return {"key1": sample(shape.value, name, depth + 1)}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        return SAMPLE_ARN if name.endswith("Arn") else f"{name}-value"
    if kind in ("integer", "long"):
        return 7
    if kind in ("double", "float"):
        return 1.5
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return SAMPLE_TIME
    if kind == "blob":
        return b"blob"
    raise AssertionError(f"unexpected shape type {kind}")


def botocore_request(operation_name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Serialize a request exactly as botocore does."""
    serializer = create_serializer("rest-json", include_validation=False)
    request: dict[str, Any] = serializer.serialize_to_request(
        parameters, MODEL.operation_model(operation_name)
    )
    return request


def parse_as_server(operation_name: str, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    protocol = backup_protocol()
    query = percent_encode_sequence(request["query_string"]) if request["query_string"] else ""
    path = request["url_path"]
    raw_path, _, fixed_query = path.partition("?")  # a requestUri query part like '?delete'
    query = "&".join(part for part in (fixed_query, query) if part)
    name, labels = protocol.match(request["method"], raw_path, query)
    body = request["body"]
    body_bytes = body if isinstance(body, bytes) else body.encode("utf-8")
    return name, protocol.parse_request(name, labels, query, request["headers"], body_bytes)


@pytest.mark.parametrize("operation_name", OPERATIONS)
def test_every_request_botocore_sends_is_routed_and_parsed_back(operation_name: str) -> None:
    shape = MODEL.operation_model(operation_name).input_shape
    parameters = sample(shape, operation_name) if shape is not None else {}
    name, parsed = parse_as_server(operation_name, botocore_request(operation_name, parameters))
    assert name == operation_name
    assert parsed == parameters


@pytest.mark.parametrize("operation_name", OPERATIONS)
def test_every_answer_is_read_back_by_botocore(operation_name: str) -> None:
    operation = MODEL.operation_model(operation_name)
    result = sample(operation.output_shape, operation_name) if operation.output_shape is not None else {}
    status, headers, body = backup_protocol().serialize_response(operation_name, result)
    assert status == operation.http.get("responseCode", 200)
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": headers, "body": body}, operation.output_shape
    )
    parsed.pop("ResponseMetadata", None)
    assert parsed == result


def test_errors_are_read_by_botocore_with_code_message_and_extra_members() -> None:
    error = AlreadyExistsException(
        "Backup vault 'main' already exists.", Arn=SAMPLE_ARN, CreatorRequestId=None
    )
    status, headers, body = serialize_error(error)
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "AlreadyExistsException"
    operation = MODEL.operation_model("CreateBackupVault")
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": headers, "body": body}, operation.output_shape
    )
    assert parsed["Error"] == {
        "Code": "AlreadyExistsException",
        "Message": "Backup vault 'main' already exists.",
    }
    assert json.loads(body)["Arn"] == SAMPLE_ARN
    assert "CreatorRequestId" not in json.loads(body)


def test_an_unknown_path_or_method_is_an_unknown_operation() -> None:
    protocol = backup_protocol()
    with pytest.raises(UnknownOperationException, match="PATCH /backup-vaults/"):
        protocol.match("PATCH", "/backup-vaults/", "")
    with pytest.raises(UnknownOperationException):
        protocol.match("GET", "/no-such-thing", "")
    assert UnknownOperationException.http_status == 404


def test_the_final_slash_is_forgiven_in_both_directions() -> None:
    protocol = backup_protocol()
    assert protocol.match("GET", "/backup-vaults", "") == ("ListBackupVaults", {})
    assert protocol.match("GET", "/backup/plans/abc", "") == ("GetBackupPlan", {"backupPlanId": "abc"})
    assert protocol.match("DELETE", "/backup/plans/abc/", "") == ("DeleteBackupPlan", {"backupPlanId": "abc"})


def test_a_literal_query_in_the_request_uri_selects_the_operation() -> None:
    protocol = backup_protocol()
    name, _ = protocol.match("POST", "/backup-vaults/main/mpaApprovalTeam", "delete")
    assert name == "DisassociateBackupVaultMpaApprovalTeam"
    with pytest.raises(UnknownOperationException):
        protocol.match("POST", "/backup-vaults/main/mpaApprovalTeam", "")


def test_encoded_arn_labels_are_decoded_once() -> None:
    name, labels = backup_protocol().match(
        "GET",
        "/backup-vaults/main/recovery-points/arn%3Aaws%3Abackup%3Alocal%3A0%3Arecovery-point%3Aa%2Fb",
        "",
    )
    assert name == "DescribeRecoveryPoint"
    assert labels["recoveryPointArn"] == "arn:aws:backup:local:0:recovery-point:a/b"


def test_query_values_are_converted_and_bad_ones_named() -> None:
    protocol = backup_protocol()
    parsed = protocol.parse_request(
        "ListBackupJobs",
        {},
        "maxResults=5&createdAfter=2025-01-02T03%3A04%3A05Z&createdBefore=1735787045",
        {},
        b"",
    )
    assert parsed == {"MaxResults": 5, "ByCreatedAfter": SAMPLE_TIME, "ByCreatedBefore": SAMPLE_TIME}
    with pytest.raises(InvalidParameterValueException, match="MaxResults must be an integer, got 'many'"):
        protocol.parse_request("ListBackupJobs", {}, "maxResults=many", {}, b"")
    with pytest.raises(InvalidParameterValueException, match="ByCreatedAfter must be a timestamp"):
        protocol.parse_request("ListBackupJobs", {}, "createdAfter=yesterday", {}, b"")
    with pytest.raises(InvalidParameterValueException, match="IncludeDeleted must be true or false"):
        protocol.parse_request("ListBackupPlans", {}, "includeDeleted=maybe", {}, b"")


def test_body_types_are_checked_with_the_member_path() -> None:
    protocol = backup_protocol()
    with pytest.raises(SerializationException, match="not valid JSON"):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, b"{nope")
    with pytest.raises(SerializationException, match="must be a JSON object, got list"):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, b"[]")
    body = {"BackupPlan": {"BackupPlanName": "p", "Rules": [{"RuleName": 5, "TargetBackupVaultName": "v"}]}}
    with pytest.raises(SerializationException, match=r"BackupPlan\.Rules\[0\]\.RuleName must be a string"):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, json.dumps(body).encode())
    body = {"BackupPlan": {"BackupPlanName": "p", "Rules": [{"RuleName": "r", "StartWindowMinutes": True}]}}
    with pytest.raises(SerializationException, match="StartWindowMinutes must be an integer, got a boolean"):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, json.dumps(body).encode())


def test_required_members_are_checked_also_when_nested() -> None:
    protocol = backup_protocol()
    with pytest.raises(MissingParameterValueException, match="Missing required parameter BackupPlan;"):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, b"{}")
    body = {"BackupPlan": {"BackupPlanName": "p", "Rules": [{"RuleName": "r"}]}}
    with pytest.raises(
        MissingParameterValueException, match=r"BackupPlan\.Rules\[0\]\.TargetBackupVaultName"
    ):
        protocol.parse_request("CreateBackupPlan", {}, "", {}, json.dumps(body).encode())


def test_unknown_body_members_are_ignored_as_aws_does() -> None:
    body = {"BackupVaultTags": {"a": "b"}, "Surprise": 1}
    parsed = backup_protocol().parse_request(
        "CreateBackupVault", {"backupVaultName": "v"}, "", {}, json.dumps(body).encode()
    )
    assert parsed == {"BackupVaultName": "v", "BackupVaultTags": {"a": "b"}}


def test_timestamps_in_bodies_accept_epoch_and_iso_8601() -> None:
    assert parse_timestamp(1735787045, "T") == SAMPLE_TIME
    assert parse_timestamp(1735787045.0, "T") == SAMPLE_TIME
    assert parse_timestamp("2025-01-02T03:04:05+00:00", "T") == SAMPLE_TIME
    assert parse_timestamp("2025-01-02T04:04:05+01:00", "T") == SAMPLE_TIME
    assert parse_timestamp("2025-01-02T03:04:05", "T") == SAMPLE_TIME  # naive means UTC
    for bad in (True, "soon", float("nan"), 1e20, None):
        with pytest.raises(InvalidParameterValueException, match="T "):
            parse_timestamp(bad, "T")


def test_a_204_answer_has_no_body_and_timestamps_are_epoch_seconds() -> None:
    protocol = backup_protocol()
    assert protocol.serialize_response("DeleteRestoreTestingPlan", {}) == (204, {}, b"")
    status, _, body = protocol.serialize_response(
        "CreateBackupVault",
        {"BackupVaultName": "v", "CreationDate": SAMPLE_TIME, "Internal": "x", "BackupVaultArn": None},
    )
    assert status == 200
    assert json.loads(body) == {"BackupVaultName": "v", "CreationDate": 1735787045.0}
