"""Per-vault "failures only", the vault settings' extension operations, sink updates and delivery listings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from control_helpers import FakeClock
from notification_helpers import Receiver

from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.notification_senders import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from backvault.control.notifications import (
    create_notification_sink,
    deliver_due,
    describe_notification_sink,
    dispatch_events,
    is_failure,
    list_notification_deliveries,
    run_notifications,
    update_notification_sink,
)
from backvault.control.vault_settings import (
    get_backup_vault_notification_settings,
    get_backup_vault_notifications,
    put_backup_vault_notification_settings,
    put_backup_vault_notifications,
)
from backvault.control.vaults import create_backup_vault
from backvault.domain.errors import InvalidParameterValueException, ResourceNotFoundException

EVENTS = ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _event(context: ServiceContext, event_type: EventType, vault: str, **detail: Any) -> None:
    with context.catalog.transaction() as session:
        record_event(
            session, event_type, context.now(), vault_name=vault, job_id=f"job-{vault}", detail=detail
        )


def _received(receiver: Receiver) -> list[tuple[str, str]]:
    return sorted(
        (json.loads(body)["BackupVaultName"], json.loads(body)["EventType"]) for _, body in receiver.requests
    )


def test_a_failures_only_vault_gets_failures_and_another_vault_on_the_same_sink_gets_all(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url)
    create_backup_vault(context, "quiet")
    create_backup_vault(context, "chatty")
    put_backup_vault_notification_settings(
        context, "quiet", sink_name="ops", backup_vault_events=EVENTS, failures_only=True
    )
    put_backup_vault_notification_settings(context, "chatty", sink_name="ops", backup_vault_events=EVENTS)
    for vault in ("quiet", "chatty"):
        _event(context, EventType.BACKUP_JOB_COMPLETED, vault, State="COMPLETED")
        _event(context, EventType.BACKUP_JOB_FAILED, vault, State="FAILED")
    # a PARTIAL job ends with BACKUP_JOB_COMPLETED too: for a failures-only vault it is a failure
    _event(context, EventType.BACKUP_JOB_COMPLETED, "quiet", State="PARTIAL")
    report = run_notifications(context)
    assert report.delivered == 4 and not report.errors
    assert _received(receiver) == [
        ("chatty", "BACKUP_JOB_COMPLETED"),
        ("chatty", "BACKUP_JOB_FAILED"),
        ("quiet", "BACKUP_JOB_COMPLETED"),
        ("quiet", "BACKUP_JOB_FAILED"),
    ]
    partial = [
        json.loads(body) for _, body in receiver.requests if json.loads(body)["BackupVaultName"] == "quiet"
    ]
    assert {payload["Detail"]["State"] for payload in partial} == {"FAILED", "PARTIAL"}


def test_failures_only_on_the_sink_still_filters_a_vault_without_it(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_notification_sink(context, "pager", "webhook", url=receiver.url, failures_only=True)
    create_backup_vault(context, "main")
    put_backup_vault_notification_settings(context, "main", sink_name="pager", backup_vault_events=EVENTS)
    _event(context, EventType.BACKUP_JOB_COMPLETED, "main", State="COMPLETED")
    _event(context, EventType.BACKUP_JOB_FAILED, "main", State="FAILED")
    assert run_notifications(context).delivered == 1
    assert _received(receiver) == [("main", "BACKUP_JOB_FAILED")]


def test_is_failure_reads_the_event_type_and_the_job_state() -> None:
    assert is_failure("COPY_JOB_FAILED")
    assert is_failure("BACKUP_JOB_EXPIRED")
    assert is_failure("RECOVERY_POINT_DELETION_REFUSED")
    assert is_failure("RESTORE_JOB_COMPLETED", {"State": "ABORTED"})
    assert not is_failure("BACKUP_JOB_COMPLETED", {"State": "COMPLETED"})
    assert not is_failure("RECOVERY_POINT_MODIFIED")


def test_the_aws_operations_keep_aws_shapes_and_an_aws_put_resets_failures_only(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url)
    create_backup_vault(context, "main")
    settings = put_backup_vault_notification_settings(
        context,
        "main",
        sink_name="ops",
        backup_vault_events=[*EVENTS, "BACKUP_JOB_FAILED"],
        failures_only=True,
    )
    arn = describe_notification_sink(context, "ops")["SinkArn"]
    assert settings["SinkName"] == "ops" and settings["FailuresOnly"] is True
    assert settings["SNSTopicArn"] == arn and settings["BackupVaultEvents"] == EVENTS
    aws = get_backup_vault_notifications(context, "main")
    assert set(aws) == {"BackupVaultName", "BackupVaultArn", "SNSTopicArn", "BackupVaultEvents"}
    # AWS's Put has no FailuresOnly: it replaces the whole configuration, so the flag is off again.
    put_backup_vault_notifications(context, "main", sns_topic_arn=arn, backup_vault_events=EVENTS)
    assert get_backup_vault_notification_settings(context, "main")["FailuresOnly"] is False
    # a topic no sink has is accepted (as AWS accepts any topic), and shows no sink name
    other = "arn:aws:sns:local:000000000000:elsewhere"
    put_backup_vault_notifications(context, "main", sns_topic_arn=other, backup_vault_events=EVENTS)
    assert get_backup_vault_notification_settings(context, "main")["SinkName"] is None


def test_the_extension_put_refuses_unclear_or_unknown_sinks(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_backup_vault(context, "main")
    with pytest.raises(ResourceNotFoundException, match="'nope'"):
        put_backup_vault_notification_settings(context, "main", sink_name="nope", backup_vault_events=EVENTS)
    with pytest.raises(InvalidParameterValueException, match="SinkName or by SNSTopicArn"):
        put_backup_vault_notification_settings(context, "main", backup_vault_events=EVENTS)
    create_notification_sink(context, "ops", "webhook", url=receiver.url)
    with pytest.raises(InvalidParameterValueException, match="BACKUP_JOB_EXPLODED"):
        put_backup_vault_notification_settings(
            context, "main", sink_name="ops", backup_vault_events=["BACKUP_JOB_EXPLODED"]
        )
    with pytest.raises(InvalidParameterValueException, match="FailuresOnly"):
        put_backup_vault_notification_settings(
            context,
            "main",
            sink_name="ops",
            backup_vault_events=EVENTS,
            failures_only="yes",  # type: ignore[arg-type]
        )
    with pytest.raises(ResourceNotFoundException):
        get_backup_vault_notification_settings(context, "main")


def test_updating_a_sink_rotates_its_key_and_keeps_what_is_not_given(
    context: ServiceContext, receiver: Receiver
) -> None:
    create_notification_sink(context, "ops", "webhook", url=receiver.url, secret="old-key")
    create_backup_vault(context, "main")
    put_backup_vault_notification_settings(context, "main", sink_name="ops", backup_vault_events=EVENTS)
    updated = update_notification_sink(context, "ops", secret="new-key", failures_only=True)
    assert updated["Settings"] == {"Url": receiver.url} and updated["FailuresOnly"] is True
    assert "new-key" not in json.dumps(updated, default=str)
    _event(context, EventType.BACKUP_JOB_FAILED, "main")
    run_notifications(context)
    ((headers, body),) = receiver.requests
    assert headers[SIGNATURE_HEADER] == signature(b"new-key", headers[TIMESTAMP_HEADER], body)
    cleared = update_notification_sink(context, "ops", clear_secret=True)
    assert cleared["HasSecret"] is False
    with pytest.raises(InvalidParameterValueException, match="not both"):
        update_notification_sink(context, "ops", secret="x", clear_secret=True)
    with pytest.raises(InvalidParameterValueException, match="recipient"):
        update_notification_sink(context, "ops", sink_type="email")  # a new kind takes only new settings
    email = update_notification_sink(
        context, "ops", sink_type="email", smtp_host="127.0.0.1", sender="a@b.test", recipients=["c@d.test"]
    )
    assert email["SinkType"] == "email" and "Url" not in email["Settings"]


def test_deliveries_are_listed_with_attempts_and_filtered_by_sink_and_status(
    context: ServiceContext, clock: FakeClock, receiver: Receiver
) -> None:
    failing = Receiver()
    failing.status = 500
    try:
        create_notification_sink(context, "good", "webhook", url=receiver.url)
        create_notification_sink(context, "bad", "webhook", url=failing.url)
        for vault, sink in (("one", "good"), ("two", "bad")):
            create_backup_vault(context, vault)
            put_backup_vault_notification_settings(context, vault, sink_name=sink, backup_vault_events=EVENTS)
            _event(context, EventType.BACKUP_JOB_FAILED, vault, StatusMessage="disk full")
        _event(context, EventType.BACKUP_JOB_COMPLETED, "one")
        assert dispatch_events(context) == 3
        deliver_due(context)
        clock.advance(timedelta(seconds=31))
        deliver_due(context)  # the second attempt for the bad sink
    finally:
        failing.close()
    listing = list_notification_deliveries(context)["Deliveries"]
    assert [item["DeliveryId"] for item in listing] == sorted(
        (item["DeliveryId"] for item in listing), reverse=True
    )
    (bad,) = list_notification_deliveries(context, sink_name="bad")["Deliveries"]
    assert bad["Status"] == "PENDING" and bad["AttemptCount"] == 2 and "HTTP 500" in bad["LastError"]
    assert (bad["EventType"], bad["BackupVaultName"], bad["JobId"]) == ("BACKUP_JOB_FAILED", "two", "job-two")
    assert [attempt["Succeeded"] for attempt in bad["Attempts"]] == [False, False]
    assert bad["NextAttemptDate"] == clock.current + timedelta(minutes=1)
    delivered = list_notification_deliveries(context, status="DELIVERED")["Deliveries"]
    assert {item["SinkName"] for item in delivered} == {"good"} and len(delivered) == 2
    assert all(item["NextAttemptDate"] is None and item["DeliveredDate"] for item in delivered)
    first = list_notification_deliveries(context, max_results=2)
    rest = list_notification_deliveries(context, max_results=2, next_token=first["NextToken"])
    assert len(first["Deliveries"]) == 2 and len(rest["Deliveries"]) == 1 and "NextToken" not in rest
    with pytest.raises(InvalidParameterValueException, match="Status 'LOST'"):
        list_notification_deliveries(context, status="LOST")
    with pytest.raises(ResourceNotFoundException, match="'missing'"):
        list_notification_deliveries(context, sink_name="missing")
