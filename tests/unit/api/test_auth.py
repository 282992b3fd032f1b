"""authenticate_request / authorize / the /backvault/users routes over a real catalog (SQLite and PostgreSQL).

Requests are signed by botocore's SigV4Auth, as boto3 signs them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from control_helpers import FakeClock, add_recovery_point
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backvault.api import identity_routes
from backvault.api.auth import Principal, authenticate_request, authorize
from backvault.api.serving import serving
from backvault.api.throttle import Throttle
from backvault.control import identity
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.vault_settings import put_backup_vault_access_policy
from backvault.control.vaults import create_backup_vault
from backvault.domain.errors import (
    AccessDeniedException,
    BackupServiceError,
    InvalidParameterValueException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    RequestExpired,
    UnrecognizedClientException,
)

ENDPOINT = "http://testserver"
READER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "backup:List*", "Resource": "*"}],
}


def signed(
    key: dict[str, Any],
    method: str = "GET",
    path: str = "/backup-vaults/",
    body: bytes = b"",
    *,
    secret: str | None = None,
) -> dict[str, Any]:
    """Sign a request with botocore; return the keyword arguments of authenticate_request."""
    request = AWSRequest(
        method=method, url=ENDPOINT + path, data=body, headers={"Content-Type": "application/json"}
    )
    credentials = Credentials(key["AccessKeyId"], secret or key["SecretAccessKey"])
    SigV4Auth(credentials, "backup", "local").add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    headers = dict(prepared.headers.items())
    headers["Host"] = "testserver"
    return {
        "method": method,
        "path": parts.path,
        "query_string": parts.query,
        "headers": headers,
        "body": body,
        "region": "local",
    }


def user_with_key(context: ServiceContext, name: str, *documents: dict[str, Any]) -> dict[str, Any]:
    """Create a user with inline policies and one key; return the key (with its secret)."""
    identity.create_user(context, name)
    for index, document in enumerate(documents):
        identity.put_user_policy(context, name, f"policy{index}", document)
    key: dict[str, Any] = identity.create_access_key(context, name)["AccessKey"]
    return key


@pytest.fixture
def admin_key(context: ServiceContext) -> dict[str, Any]:
    """The bootstrap admin's key."""
    created, key = identity.bootstrap_admin(context)
    assert created and key is not None
    return key


# --- authentication ---------------------------------------------------------------------------------


def test_a_signed_request_authenticates_its_user(
    clock: FakeClock, context: ServiceContext, admin_key: dict[str, Any]
) -> None:
    request = signed(admin_key, "POST", "/backup-vaults/main", b'{"BackupVaultTags":{}}')
    # The fake clock is not the signing time: move it there.
    clock.current = _signing_time(request)
    principal = authenticate_request(context, **request)
    assert principal.user_name == "admin"
    assert principal.user_arn == "arn:aws:iam::000000000000:user/admin"
    assert principal.access_key_id == admin_key["AccessKeyId"]
    keys = identity.list_access_keys(context, "admin")["AccessKeyMetadata"]
    assert keys[0]["LastUsedDate"] == context.now()


def _signing_time(request: dict[str, Any]) -> datetime:
    return datetime.strptime(request["headers"]["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def test_refused_requests(clock: FakeClock, context: ServiceContext, admin_key: dict[str, Any]) -> None:
    good = signed(admin_key)
    clock.current = _signing_time(good)
    changed = signed(admin_key, "PUT", "/backup-vaults/main", b'{"a":1}')
    changed["body"] = b'{"a":2}'
    with pytest.raises(InvalidSignatureException):
        authenticate_request(context, **changed)
    with pytest.raises(InvalidSignatureException):
        authenticate_request(context, **signed(admin_key, secret="wrong-secret"))
    unsigned = dict(good, headers={"Host": "testserver"})
    with pytest.raises(MissingAuthenticationTokenException):
        authenticate_request(context, **unsigned)
    unknown = dict(admin_key, AccessKeyId="BVKNOTAKEY0000000000")
    with pytest.raises(UnrecognizedClientException):
        authenticate_request(context, **signed(unknown))
    clock.advance(timedelta(minutes=20))
    with pytest.raises(RequestExpired):
        authenticate_request(context, **good)


def test_inactive_and_deleted_keys_stop_working(clock: FakeClock, context: ServiceContext) -> None:
    key = user_with_key(context, "alice", READER)
    request = signed(key)
    clock.current = _signing_time(request)
    assert authenticate_request(context, **request).user_name == "alice"
    identity.update_access_key(context, key["AccessKeyId"], "Inactive")
    with pytest.raises(UnrecognizedClientException):
        authenticate_request(context, **request)
    identity.update_access_key(context, key["AccessKeyId"], "Active")
    assert authenticate_request(context, **request).user_name == "alice"
    identity.delete_access_key(context, key["AccessKeyId"])
    with pytest.raises(UnrecognizedClientException):
        authenticate_request(context, **request)


def test_logs_and_errors_never_contain_the_secret(
    clock: FakeClock, context: ServiceContext, admin_key: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret = admin_key["SecretAccessKey"]
    good = signed(admin_key)
    clock.current = _signing_time(good)
    failures: list[BackupServiceError] = []
    with caplog.at_level(logging.DEBUG):
        principal = authenticate_request(context, **good)
        authorize(context, principal, "backup:ListBackupVaults", ["*"])
        tampered = dict(good, body=b"x")
        attempts = [tampered, signed(admin_key, secret=secret[::-1]), dict(good, region="elsewhere")]
        for request in attempts:
            with pytest.raises(BackupServiceError) as caught:
                authenticate_request(context, **request)
            failures.append(caught.value)
        reader = user_with_key(context, "reader", READER)
        reader_principal = authenticate_request(context, **signed(reader))
        with pytest.raises(AccessDeniedException) as denied:
            authorize(context, reader_principal, "backup:DeleteBackupVault", ["*"])
        failures.append(denied.value)
    assert "authentication refused" in caplog.text  # failures are logged...
    shown = (
        caplog.text
        + repr(principal)
        + "".join(error.message + repr(error) + json.dumps(error.to_response_body()) for error in failures)
    )
    for value in (secret, reader["SecretAccessKey"]):
        assert value not in shown  # ...without any secret


# --- authorization ----------------------------------------------------------------------------------


def test_identity_policies_allow_and_deny(context: ServiceContext) -> None:
    principal = Principal("reader", identity.user_arn(context, "reader"), "BVKX", (READER,))
    authorize(context, principal, "backup:ListBackupVaults", ["*"])
    authorize(context, principal, "backup:ListRecoveryPointsByBackupVault", [])
    with pytest.raises(AccessDeniedException) as caught:
        authorize(
            context,
            principal,
            "backup:CreateBackupVault",
            ["arn:aws:backup:local:000000000000:backup-vault:v1"],
        )
    assert caught.value.http_status == 403
    assert caught.value.message == (
        "User: arn:aws:iam::000000000000:user/reader is not authorized to perform: backup:CreateBackupVault "
        "on resource: arn:aws:backup:local:000000000000:backup-vault:v1 because no identity-based policy "
        "allows the backup:CreateBackupVault action"
    )
    nobody = Principal("nobody", identity.user_arn(context, "nobody"), "BVKY", ())
    with pytest.raises(AccessDeniedException):
        authorize(context, nobody, "backup:ListBackupVaults", ["*"])


def test_vault_access_policy_denies_everyone_even_the_admin(
    context: ServiceContext, admin_key: dict[str, Any]
) -> None:
    vault_arn = create_backup_vault(context, "locked")["BackupVaultArn"]
    other_arn = create_backup_vault(context, "open")["BackupVaultArn"]
    point_id = add_recovery_point(context.catalog, "locked", vault_arn, context.now())
    point_arn = f"arn:aws:backup:local:000000000000:recovery-point:{point_id}"
    other_point = add_recovery_point(context.catalog, "open", other_arn, context.now())
    other_point_arn = f"arn:aws:backup:local:000000000000:recovery-point:{other_point}"
    admin, _ = identity.signing_secret(context, admin_key["AccessKeyId"])
    authorize(context, admin, "backup:DeleteRecoveryPoint", [vault_arn, point_arn])
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "backup:DeleteRecoveryPoint", "Resource": "*"}
        ],
    }
    put_backup_vault_access_policy(context, "locked", policy=json.dumps(policy))
    with pytest.raises(AccessDeniedException, match="explicit deny in the backup vault's access policy"):
        authorize(context, admin, "backup:DeleteRecoveryPoint", [vault_arn, point_arn])
    # A recovery point ARN alone leads to its vault's policy too.
    with pytest.raises(AccessDeniedException):
        authorize(context, admin, "backup:DeleteRecoveryPoint", [point_arn])
    # Other actions, and other vaults, are unaffected.
    authorize(context, admin, "backup:DescribeRecoveryPoint", [vault_arn, point_arn])
    authorize(context, admin, "backup:DeleteRecoveryPoint", [other_arn, other_point_arn])


def test_a_malformed_vault_policy_denies_all_but_its_repair(
    context: ServiceContext, admin_key: dict[str, Any]
) -> None:
    vault_arn = create_backup_vault(context, "broken")["BackupVaultArn"]
    admin, _ = identity.signing_secret(context, admin_key["AccessKeyId"])
    # No Principal: PutBackupVaultAccessPolicy refuses it, so it is written straight into the catalog,
    # as a policy stored by an older version would be.
    no_principal = {"Statement": [{"Effect": "Allow", "Action": "backup:*", "Resource": "*"}]}
    with pytest.raises(InvalidParameterValueException, match="Principal"):
        put_backup_vault_access_policy(context, "broken", policy=json.dumps(no_principal))
    with context.catalog.transaction() as session:
        session.get(BackupVault, "broken").access_policy = no_principal  # type: ignore[union-attr]
    with pytest.raises(AccessDeniedException, match=r"access policy is malformed .*Principal"):
        authorize(context, admin, "backup:DescribeBackupVault", [vault_arn])
    authorize(context, admin, "backup:PutBackupVaultAccessPolicy", [vault_arn])
    authorize(context, admin, "backup:DeleteBackupVaultAccessPolicy", [vault_arn])
    reader = Principal("reader", identity.user_arn(context, "reader"), "BVKR", (READER,))
    with pytest.raises(AccessDeniedException, match="no identity-based policy allows"):
        authorize(context, reader, "backup:DeleteBackupVaultAccessPolicy", [vault_arn])


def test_vault_access_policy_can_grant_a_named_user(context: ServiceContext) -> None:
    vault_arn = create_backup_vault(context, "shared")["BackupVaultArn"]
    bob = Principal("bob", identity.user_arn(context, "bob"), "BVKB", ())
    carol = Principal("carol", identity.user_arn(context, "carol"), "BVKC", ())
    grant = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": [bob.user_arn]},
                "Action": "backup:DescribeBackupVault",
                "Resource": vault_arn,
            }
        ],
    }
    put_backup_vault_access_policy(context, "shared", policy=json.dumps(grant))
    authorize(context, bob, "backup:DescribeBackupVault", [vault_arn])
    with pytest.raises(AccessDeniedException):
        authorize(context, carol, "backup:DescribeBackupVault", [vault_arn])
    with pytest.raises(AccessDeniedException):
        authorize(context, bob, "backup:DeleteBackupVault", [vault_arn])


# --- the /backvault/users routes -------------------------------------------------------------------


def _app(context: ServiceContext) -> FastAPI:
    app = FastAPI()
    app.state.context = context
    app.state.region = "local"
    app.state.throttle = Throttle(rate_per_second=100, burst=100)

    async def service_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, BackupServiceError)
        return JSONResponse(error.to_response_body(), status_code=error.http_status)

    app.add_exception_handler(BackupServiceError, service_error)
    app.include_router(identity_routes.router)
    return app


@pytest.fixture
def server(context: ServiceContext) -> Iterator[str]:
    """Serve the user routes with uvicorn on 127.0.0.1 and yield the base URL."""
    with serving(_app(context)) as url:
        yield url


def call(base: str, key: dict[str, Any], method: str, path: str, document: Any = None) -> httpx.Response:
    """Send a botocore-signed request to the server."""
    body = b"" if document is None else json.dumps(document).encode()
    request = AWSRequest(
        method=method, url=base + path, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(key["AccessKeyId"], key["SecretAccessKey"]), "backup", "local").add_auth(request)
    prepared = request.prepare()
    return httpx.request(method, prepared.url, content=body, headers=dict(prepared.headers.items()))


def test_user_routes_manage_users_and_keys(clock: FakeClock, server: str, admin_key: dict[str, Any]) -> None:
    clock.current = datetime.now(UTC)  # botocore signs with the real time
    assert call(server, admin_key, "POST", "/backvault/users", {"UserName": "alice"}).status_code == 200
    listed = call(server, admin_key, "GET", "/backvault/users").json()
    assert [user["UserName"] for user in listed["Users"]] == ["admin", "alice"]
    answer = call(
        server, admin_key, "PUT", "/backvault/users/alice/policies/read", {"PolicyDocument": READER}
    )
    assert answer.status_code == 200, answer.text
    empty = {"PolicyDocument": {"Statement": []}}
    bad = call(server, admin_key, "PUT", "/backvault/users/alice/policies/bad", empty)
    assert bad.status_code == 400 and "MalformedPolicyDocument" in bad.json()["Message"]
    created = call(server, admin_key, "POST", "/backvault/users/alice/access-keys")
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    alice_key = created.json()["AccessKey"]
    listed_keys = call(server, admin_key, "GET", "/backvault/users/alice/access-keys")
    assert alice_key["SecretAccessKey"] not in listed_keys.text
    assert [k["AccessKeyId"] for k in listed_keys.json()["AccessKeyMetadata"]] == [alice_key["AccessKeyId"]]

    # alice may only backup:List*, which does not cover backvault:ListUsers ...
    refused = call(server, alice_key, "GET", "/backvault/users")
    assert refused.status_code == 403 and refused.json()["__type"] == "AccessDeniedException"
    assert "backvault:ListUsers" in refused.json()["Message"]
    # ... and she cannot make herself an administrator.
    escalate = {"PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}}
    assert call(server, alice_key, "PUT", "/backvault/users/alice/policies/me", escalate).status_code == 403
    unsigned = httpx.get(server + "/backvault/users")
    assert unsigned.status_code == 403 and unsigned.json()["__type"] == "MissingAuthenticationTokenException"

    assert call(server, admin_key, "DELETE", "/backvault/users/alice").status_code == 400  # still has a key
    path = f"/backvault/users/alice/access-keys/{alice_key['AccessKeyId']}"
    assert call(server, admin_key, "DELETE", path).status_code == 200
    gone = call(server, alice_key, "GET", "/backvault/users")
    assert gone.status_code == 403 and gone.json()["__type"] == "UnrecognizedClientException"
    assert call(server, admin_key, "DELETE", "/backvault/users/alice?force=true").status_code == 200
    assert (
        call(server, admin_key, "GET", "/backvault/users/alice").json()["__type"]
        == "ResourceNotFoundException"
    )
