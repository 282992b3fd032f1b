"""The notification extension routes over signed HTTP: sinks, vault settings, deliveries, auth, no secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from control_helpers import FakeClock
from notification_helpers import Receiver

from backvault.api.app import create_app
from backvault.api.serving import serving
from backvault.api.throttle import Throttle
from backvault.control import identity
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.notifications import run_notifications
from backvault.control.vaults import create_backup_vault

HMAC_KEY = "route-hmac-key-never-echoed"
SINKS = "/backvault/notification-sinks"


class Api:
    """The whole API app served on 127.0.0.1, and botocore-signed requests to it."""

    def __init__(self, base: str, key: dict[str, Any]) -> None:
        self.base = base
        self.key = key
        self.answers: list[str] = []  # every answer's text, to look for secrets in

    def call(
        self, method: str, path: str, document: Any = None, *, key: dict[str, Any] | None = None
    ) -> httpx.Response:
        """Send a signed request (with ``key``, default the admin's); remember the answer."""
        signer = key or self.key
        body = b"" if document is None else json.dumps(document).encode()
        request = AWSRequest(
            method=method, url=self.base + path, data=body, headers={"Content-Type": "application/json"}
        )
        credentials = Credentials(signer["AccessKeyId"], signer["SecretAccessKey"])
        SigV4Auth(credentials, "backup", "local").add_auth(request)
        prepared = request.prepare()
        answer = httpx.request(method, prepared.url, content=body, headers=dict(prepared.headers.items()))
        self.answers.append(answer.text)
        return answer


@pytest.fixture
def api(context: ServiceContext, clock: FakeClock) -> Iterator[Api]:
    """Serve create_app(context) with uvicorn; the admin's key signs by default."""
    clock.current = datetime.now(UTC)  # botocore signs with the real time
    created, key = identity.bootstrap_admin(context)
    assert created and key is not None
    app = create_app(context, region="local", throttle=Throttle(rate_per_second=1000, burst=1000))
    with serving(app) as url:
        yield Api(url, key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _error(answer: httpx.Response) -> tuple[int, str, str]:
    body = answer.json()
    return answer.status_code, body["__type"], body["Message"]


def test_sinks_vault_settings_and_deliveries_over_signed_http(
    api: Api, context: ServiceContext, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sink = {"SinkName": "ops", "SinkType": "webhook", "Url": receiver.url, "Secret": HMAC_KEY}
    created = api.call("POST", SINKS, sink)
    assert created.status_code == 200, created.text
    assert (
        created.json()["HasSecret"] is True
        and created.json()["SinkArn"] == "arn:aws:sns:local:000000000000:ops"
    )
    again = api.call("POST", SINKS, sink)
    assert _error(again)[:2] == (400, "AlreadyExistsException")
    typo = api.call("POST", SINKS, {**sink, "SinkName": "x", "Urll": "http://x"})
    status, code, message = _error(typo)
    assert (status, code) == (400, "InvalidParameterValueException") and "Urll" in message
    assert [item["SinkName"] for item in api.call("GET", SINKS).json()["Sinks"]] == ["ops"]
    assert api.call("GET", f"{SINKS}/ops").json()["Settings"] == {"Url": receiver.url}
    rotated = api.call("PUT", f"{SINKS}/ops", {"Secret": HMAC_KEY + "-2", "FailuresOnly": False})
    assert rotated.status_code == 200 and rotated.json()["HasSecret"] is True

    create_backup_vault(context, "main")
    events = ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"]
    put = api.call(
        "PUT",
        "/backvault/vaults/main/notifications",
        {"SinkName": "ops", "BackupVaultEvents": events, "FailuresOnly": True},
    )
    assert put.status_code == 200, put.text
    shown = api.call("GET", "/backvault/vaults/main/notifications").json()
    assert (shown["SinkName"], shown["FailuresOnly"], shown["BackupVaultEvents"]) == ("ops", True, events)
    unknown = api.call(
        "PUT", "/backvault/vaults/main/notifications", {"SinkName": "nope", "BackupVaultEvents": events}
    )
    assert _error(unknown)[:2] == (400, "ResourceNotFoundException")

    with context.catalog.transaction() as session:
        for event_type in (EventType.BACKUP_JOB_COMPLETED, EventType.BACKUP_JOB_FAILED):
            record_event(session, event_type, context.now(), vault_name="main", detail={"State": "x"})
    assert run_notifications(context).delivered == 1
    deliveries = api.call("GET", "/backvault/notification-deliveries?sinkName=ops&status=DELIVERED").json()
    (delivery,) = deliveries["Deliveries"]
    assert (delivery["EventType"], delivery["Status"], delivery["AttemptCount"]) == (
        "BACKUP_JOB_FAILED",
        "DELIVERED",
        1,
    )
    assert isinstance(delivery["Attempts"][0]["AttemptDate"], float)  # epoch seconds, as the AWS API
    assert api.call("GET", "/backvault/notification-deliveries?status=FAILED").json()["Deliveries"] == []
    bad_status = api.call("GET", "/backvault/notification-deliveries?status=LOST")
    assert _error(bad_status)[:2] == (400, "InvalidParameterValueException")

    assert api.call("DELETE", "/backvault/vaults/main/notifications").status_code == 200
    assert _error(api.call("GET", "/backvault/vaults/main/notifications"))[:2] == (
        400,
        "ResourceNotFoundException",
    )
    assert api.call("DELETE", f"{SINKS}/ops").status_code == 200
    assert _error(api.call("GET", f"{SINKS}/ops"))[:2] == (400, "ResourceNotFoundException")
    for text in api.answers:
        assert HMAC_KEY not in text
    assert HMAC_KEY not in caplog.text


def test_routes_refuse_unsigned_and_unauthorised_callers(
    api: Api, context: ServiceContext, receiver: Receiver
) -> None:
    unsigned = httpx.get(api.base + SINKS)
    assert _error(unsigned)[:2] == (403, "MissingAuthenticationTokenException")
    forged = api.call("GET", SINKS, key={**api.key, "SecretAccessKey": "y" * 40})
    assert _error(forged)[:2] == (403, "InvalidSignatureException")

    api.call("POST", SINKS, {"SinkName": "ops", "SinkType": "webhook", "Url": receiver.url})
    api.call("POST", SINKS, {"SinkName": "other", "SinkType": "webhook", "Url": receiver.url})
    identity.create_user(context, "operator")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "backup:*", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": ["backvault:DescribeNotificationSink", "backvault:ListNotificationDeliveries"],
                "Resource": "arn:aws:sns:local:000000000000:ops",
            },
        ],
    }
    identity.put_user_policy(context, "operator", "limited", policy)
    key = identity.create_access_key(context, "operator")["AccessKey"]
    denied = api.call(
        "POST",
        SINKS,
        {"SinkName": "x", "SinkType": "webhook", "Url": receiver.url, "Secret": HMAC_KEY},
        key=key,
    )
    status, code, message = _error(denied)
    assert (status, code) == (403, "AccessDeniedException")
    assert "backvault:CreateNotificationSink" in message and HMAC_KEY not in denied.text
    assert api.call("GET", f"{SINKS}/ops", key=key).status_code == 200
    other = api.call("GET", f"{SINKS}/other", key=key)
    assert _error(other)[:2] == (403, "AccessDeniedException")
    assert "arn:aws:sns:local:000000000000:other" in _error(other)[2]
    assert api.call("GET", "/backvault/notification-deliveries?sinkName=ops", key=key).status_code == 200
    everything = api.call("GET", "/backvault/notification-deliveries", key=key)
    assert _error(everything)[:2] == (403, "AccessDeniedException")
    create_backup_vault(context, "main")
    settings = api.call(
        "PUT",
        "/backvault/vaults/main/notifications",
        {"SinkName": "ops", "BackupVaultEvents": ["BACKUP_JOB_FAILED"]},
        key=key,
    )
    status, code, message = _error(settings)
    assert (status, code) == (403, "AccessDeniedException")
    assert "backvault:PutBackupVaultNotificationSettings" in message and ":backup-vault:main" in message


def test_openapi_lists_the_notification_routes(api: Api) -> None:
    paths = set(httpx.get(api.base + "/openapi.json", timeout=10).json()["paths"])
    assert {
        SINKS,
        f"{SINKS}/{{sink_name}}",
        "/backvault/notification-deliveries",
        "/backvault/vaults/{vault_name}/notifications",
    } <= paths
