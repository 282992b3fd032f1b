"""The server at the HTTP level: extension routes, OpenAPI, limits, throttling and error shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.session
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from e2e_helpers import REGION, ApiServer, running_server

from backvault.api import app as app_module
from backvault.api.throttle import Throttle
from backvault.control import locations
from backvault.control.identity import create_access_key, create_user, put_user_policy


def aws_error(response: httpx.Response) -> tuple[int, str, str]:
    """Return (status, x-amzn-ErrorType, Message) of an AWS-shaped error answer."""
    body = response.json()
    assert body["__type"] == response.headers["x-amzn-ErrorType"]
    return response.status_code, body["__type"], body["Message"]


def test_storage_locations_over_signed_http(sqlite_server: ApiServer, tmp_path: Path) -> None:
    location = {"LocationName": "archive", "LocationType": "local", "Path": str(tmp_path / "archive")}
    created = sqlite_server.request("POST", "/backvault/storage-locations", json_body=location)
    assert created.status_code == 200, created.text
    assert created.json()["LocationName"] == "archive"
    listed = sqlite_server.request("GET", "/backvault/storage-locations?maxResults=1")
    assert [item["LocationName"] for item in listed.json()["StorageLocations"]] == ["archive"]
    rest = sqlite_server.request(
        "GET",
        f"/backvault/storage-locations?maxResults=1&nextToken={quote(listed.json()['NextToken'], safe='')}",
    )
    assert [item["LocationName"] for item in rest.json()["StorageLocations"]] == ["local"]
    assert (
        sqlite_server.request("GET", "/backvault/storage-locations/archive").json()["LocationName"]
        == "archive"
    )

    again = sqlite_server.request("POST", "/backvault/storage-locations", json_body=location)
    assert aws_error(again)[:2] == (400, "AlreadyExistsException")
    typo = sqlite_server.request(
        "POST", "/backvault/storage-locations", json_body={**location, "Pathh": "/x"}
    )
    status, code, message = aws_error(typo)
    assert (status, code) == (400, "InvalidParameterValueException")
    assert "Pathh" in message

    assert sqlite_server.request("DELETE", "/backvault/storage-locations/archive").status_code == 200
    gone = sqlite_server.request("GET", "/backvault/storage-locations/archive")
    assert aws_error(gone)[:2] == (400, "ResourceNotFoundException")


def test_extension_routes_are_signed_and_authorised(sqlite_server: ApiServer) -> None:
    unsigned = sqlite_server.request("GET", "/backvault/storage-locations", signed=False)
    assert aws_error(unsigned)[:2] == (403, "MissingAuthenticationTokenException")
    forged = sqlite_server.request("GET", "/backvault/storage-locations", secret_access_key="y" * 40)
    assert aws_error(forged)[:2] == (403, "InvalidSignatureException")

    context = sqlite_server.context
    create_user(context, "operator")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "backup:*", "Resource": "*"}],
    }
    put_user_policy(context, "operator", "backup-only", policy)
    key = create_access_key(context, "operator")["AccessKey"]
    denied = sqlite_server.request(
        "POST",
        "/backvault/storage-locations",
        json_body={"LocationName": "x", "LocationType": "local", "Path": "/tmp/x"},
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
    )
    status, code, message = aws_error(denied)
    assert (status, code) == (403, "AccessDeniedException")
    assert "backvault:CreateStorageLocation" in message
    listed = sqlite_server.request("GET", "/backvault/storage-locations")
    assert [item["LocationName"] for item in listed.json()["StorageLocations"]] == ["local"]


def test_endpoints_and_discovery_over_http(sqlite_server: ApiServer, tmp_path: Path) -> None:
    root = tmp_path / "shares"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / ".backvault-tags").write_text("backup = daily\n")
    (root / "music").mkdir()
    endpoint = {
        "EndpointName": "nas",
        "EndpointType": "Filesystem",
        "Connection": {"root": str(root)},
        "DefaultTags": {"site": "home"},
    }
    registered = sqlite_server.request("POST", "/backvault/endpoints", json_body=endpoint)
    assert registered.status_code == 200, registered.text
    assert sqlite_server.request("GET", "/backvault/endpoints/nas").json()["EndpointName"] == "nas"
    assert [
        item["EndpointName"]
        for item in sqlite_server.request("GET", "/backvault/endpoints").json()["SourceEndpoints"]
    ] == ["nas"]

    discovered = sqlite_server.request("POST", "/backvault/endpoints/nas/discover")
    assert discovered.status_code == 200, discovered.text
    resources = sqlite_server.request("GET", "/backvault/resources?endpointName=nas").json()["Resources"]
    tags = {item["ResourceName"]: item["NativeTags"] for item in resources}
    assert tags == {"music": {"site": "home"}, "photos": {"site": "home", "backup": "daily"}}

    photos_arn = next(item["ResourceArn"] for item in resources if item["ResourceName"] == "photos")
    described = sqlite_server.client().describe_protected_resource(ResourceArn=photos_arn)
    assert (described["ResourceArn"], described["ResourceType"]) == (photos_arn, "Filesystem")
    assert sqlite_server.request("POST", "/backvault/discovery").status_code == 200
    assert sqlite_server.request("DELETE", "/backvault/endpoints/nas").status_code == 200


def test_openapi_documents_the_extensions_only(sqlite_server: ApiServer) -> None:
    document = httpx.get(sqlite_server.endpoint_url + "/openapi.json", timeout=10).json()
    paths = set(document["paths"])
    assert {"/backvault/storage-locations", "/backvault/endpoints", "/backvault/resources"} <= paths
    assert "/backvault/users" in paths
    assert all(path.startswith("/backvault/") for path in paths)
    create = document["paths"]["/backvault/storage-locations"]["post"]
    assert "requestBody" in create


def test_request_bodies_over_the_limit_are_refused(sqlite_server: ApiServer) -> None:
    big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    declared = sqlite_server.request("PUT", "/backup-vaults/main", content=big)
    status, code, _ = aws_error(declared)
    assert status == 413 and code == "LimitExceededException"

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    streamed = httpx.put(sqlite_server.endpoint_url + "/backup-vaults/main", content=chunks(), timeout=30)
    assert "content-length" not in streamed.request.headers
    assert aws_error(streamed)[0] == 413
    assert sqlite_server.client().list_backup_vaults()["BackupVaultList"] == []


def test_unknown_and_unsupported_operations(sqlite_server: ApiServer) -> None:
    unknown = sqlite_server.request("GET", "/no/such/operation")
    status, code, message = aws_error(unknown)
    assert (status, code) == (404, "UnknownOperationException")
    assert "GET /no/such/operation" in message
    assert aws_error(sqlite_server.request("GET", "/backvault/nothing-here"))[:2] == (
        404,
        "UnknownOperationException",
    )
    with pytest.raises(ClientError) as excinfo:
        sqlite_server.client().list_backup_job_summaries()
    assert excinfo.value.response["Error"]["Code"] == "UnsupportedOperationException"
    assert "ListBackupJobSummaries" in excinfo.value.response["Error"]["Message"]
    # audit and restore testing are served
    assert sqlite_server.client().list_frameworks()["Frameworks"] == []
    assert sqlite_server.client().list_restore_testing_plans()["RestoreTestingPlans"] == []


def test_an_internal_error_is_a_bare_500(
    sqlite_server: ApiServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No real request can reach a bug on purpose; replace one operation's service with a failing one.
    def broken(context: Any, parameters: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("connection string postgresql://admin:hunter2@db/catalog")

    monkeypatch.setattr(app_module, "operation_handler", lambda name: broken)
    response = sqlite_server.request("GET", "/backup-vaults/")
    status, code, message = aws_error(response)
    assert (status, code) == (500, "InternalFailure")
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.headers["x-amzn-RequestId"] in message
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "backvault.api.app")
    assert "RuntimeError" in logged and "postgresql://admin:***@db/catalog" in logged
    assert "hunter2" not in logged

    monkeypatch.setattr(locations, "list_storage_locations", broken)
    extension = sqlite_server.request("GET", "/backvault/storage-locations")
    assert aws_error(extension)[:2] == (500, "InternalFailure")
    assert "hunter2" not in extension.text
    assert "hunter2" not in "\n".join(record.getMessage() for record in caplog.records)


def test_throttling_answers_429_per_access_key(tmp_path: Path) -> None:
    with running_server(None, tmp_path / "data", throttle=Throttle(rate_per_second=0.001, burst=2)) as server:
        client = server.client()
        client.list_backup_vaults()
        client.list_backup_vaults()
        with pytest.raises(ClientError) as excinfo:
            client.list_backup_vaults()
        response = excinfo.value.response
        assert (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]) == (
            "ThrottlingException",
            429,
        )


def test_every_answer_carries_a_request_id(sqlite_server: ApiServer) -> None:
    ok = sqlite_server.client().list_backup_vaults()
    assert len(ok["ResponseMetadata"]["RequestId"]) == 36
    anonymous = botocore.session.get_session().create_client(
        "backup",
        endpoint_url=sqlite_server.endpoint_url,
        region_name=REGION,
        config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as excinfo:
        anonymous.list_backup_vaults()
    assert len(excinfo.value.response["ResponseMetadata"]["RequestId"]) == 36
    assert (
        json.loads(json.dumps(excinfo.value.response["Error"]))["Code"]
        == "MissingAuthenticationTokenException"
    )


def test_metrics_are_served_signed_only(sqlite_server: ApiServer) -> None:
    answer = sqlite_server.request("GET", "/backvault/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert "backvault_jobs" in answer.text and "backvault_dedup_ratio" in answer.text
    unsigned = httpx.get(sqlite_server.endpoint_url + "/backvault/metrics", timeout=10)
    assert unsigned.status_code == 403
