"""Notifications: vault events reach a signed webhook, a Slack webhook and an SMTP server, with retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from control_helpers import FakeClock
from notification_helpers import Mailbox, Receiver, free_port

from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.notification_senders import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from backvault.control.notifications import (
    MAX_ATTEMPTS,
    create_notification_sink,
    delete_notification_sink,
    deliver_due,
    delivery_history,
    describe_notification_sink,
    dispatch_events,
    list_notification_sinks,
    run_notifications,
)
from backvault.control.vault_settings import put_backup_vault_notifications
from backvault.control.vaults import create_backup_vault
from backvault.domain.errors import AlreadyExistsException, InvalidParameterValueException

HMAC_KEY = "webhook-hmac-key-never-logged"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _vault_with_sink(context: ServiceContext, sink: str, events: list[str]) -> None:
    create_backup_vault(context, "main")
    arn = describe_notification_sink(context, sink)["SinkArn"]
    put_backup_vault_notifications(context, "main", sns_topic_arn=arn, backup_vault_events=events)


def _event(context: ServiceContext, event_type: EventType, vault: str = "main", **detail: Any) -> None:
    with context.catalog.transaction() as session:
        record_event(session, event_type, context.now(), vault_name=vault, job_id="job-1", detail=detail)


def test_webhook_gets_signed_json_for_subscribed_events_only(
    context: ServiceContext, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url, secret=HMAC_KEY)
    _vault_with_sink(context, "ops", ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"])
    _event(context, EventType.BACKUP_JOB_COMPLETED)
    _event(context, EventType.BACKUP_JOB_STARTED)  # not subscribed
    _event(context, EventType.BACKUP_JOB_COMPLETED, vault="other")  # another vault
    report = run_notifications(context)
    assert report.delivered == 1 and not report.errors
    ((headers, body),) = receiver.requests
    payload = json.loads(body)
    assert payload["EventType"] == "BACKUP_JOB_COMPLETED" and payload["BackupVaultName"] == "main"
    assert headers[SIGNATURE_HEADER] == signature(HMAC_KEY.encode(), headers[TIMESTAMP_HEADER], body)
    # a second pass sends nothing again
    assert run_notifications(context).delivered == 0
    assert len(receiver.requests) == 1
    assert describe_notification_sink(context, "ops")["HasSecret"] is True
    assert HMAC_KEY not in json.dumps(list_notification_sinks(context), default=str)
    assert HMAC_KEY not in caplog.text


def test_failed_delivery_is_retried_with_backoff_and_every_attempt_recorded(
    context: ServiceContext, clock: FakeClock, receiver: Receiver
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url)
    _vault_with_sink(context, "ops", ["BACKUP_JOB_FAILED"])
    _event(context, EventType.BACKUP_JOB_FAILED, StatusMessage="disk full")
    receiver.status = 503
    assert dispatch_events(context) == 1
    first = deliver_due(context)
    assert first.retrying == 1 and "HTTP 503" in first.errors[0]
    assert deliver_due(context).retrying == 0  # not due again yet: backoff
    clock.advance(timedelta(seconds=31))
    receiver.status = 200
    assert deliver_due(context).delivered == 1
    (history,) = delivery_history(context)
    assert history["Status"] == "DELIVERED"
    assert [attempt["Succeeded"] for attempt in history["Attempts"]] == [False, True]
    assert len(receiver.requests) == 2


def test_delivery_gives_up_after_the_last_attempt(
    context: ServiceContext, clock: FakeClock, receiver: Receiver
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url)
    _vault_with_sink(context, "ops", ["COPY_JOB_FAILED"])
    _event(context, EventType.COPY_JOB_FAILED)
    receiver.status = 500
    dispatch_events(context)
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcomes.append(deliver_due(context))
        clock.advance(timedelta(hours=2))
    assert outcomes[-1].failed == 1
    (history,) = delivery_history(context)
    assert history["Status"] == "FAILED" and len(history["Attempts"]) == MAX_ATTEMPTS
    assert deliver_due(context).retrying == 0


def test_failures_only_sink_skips_successes_and_slack_gets_text(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_notification_sink(context, "chat", "slack", url=receiver.url, failures_only=True)
    _vault_with_sink(context, "chat", ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"])
    _event(context, EventType.BACKUP_JOB_COMPLETED)
    _event(context, EventType.BACKUP_JOB_FAILED, StatusMessage="pg_dump: connection refused")
    assert run_notifications(context).delivered == 1
    ((_, body),) = receiver.requests
    text = json.loads(body)["text"]
    assert "BACKUP_JOB_FAILED" in text and "connection refused" in text


def test_email_sink_sends_through_smtp(context: ServiceContext) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        create_notification_sink(
            context,
            "mail",
            "email",
            smtp_host="127.0.0.1",
            smtp_port=port,
            sender="backvault@example.test",
            recipients=["ops@example.test"],
        )
        _vault_with_sink(context, "mail", ["RESTORE_JOB_COMPLETED"])
        _event(context, EventType.RESTORE_JOB_COMPLETED)
        assert run_notifications(context).delivered == 1
    finally:
        controller.stop()
    (envelope,) = mailbox.messages
    assert envelope.rcpt_tos == ["ops@example.test"]
    assert b"RESTORE_JOB_COMPLETED" in envelope.content


def test_unreachable_smtp_server_is_a_recorded_failure(context: ServiceContext) -> None:
    create_notification_sink(
        context,
        "mail",
        "email",
        smtp_host="127.0.0.1",
        smtp_port=1,
        sender="a@b.test",
        recipients=["c@d.test"],
    )
    _vault_with_sink(context, "mail", ["BACKUP_JOB_EXPIRED"])
    _event(context, EventType.BACKUP_JOB_EXPIRED)
    report = run_notifications(context)
    assert report.retrying == 1 and "unreachable" in report.errors[0]


def test_bad_sinks_are_refused_with_a_reason(context: ServiceContext, receiver: Receiver) -> None:
    with pytest.raises(InvalidParameterValueException, match="Sink type"):
        create_notification_sink(context, "x", "pager", url=receiver.url)
    with pytest.raises(InvalidParameterValueException, match="http"):
        create_notification_sink(context, "x", "webhook", url="ftp://example.test")
    with pytest.raises(InvalidParameterValueException, match="secret"):
        create_notification_sink(context, "x", "webhook", url="http://user:pw@127.0.0.1/")
    with pytest.raises(InvalidParameterValueException, match="recipient"):
        create_notification_sink(context, "x", "email", smtp_host="127.0.0.1")
    create_notification_sink(context, "x", "webhook", url=receiver.url)
    with pytest.raises(AlreadyExistsException):
        create_notification_sink(context, "x", "webhook", url=receiver.url)
    delete_notification_sink(context, "x")
    assert list_notification_sinks(context)["Sinks"] == []
