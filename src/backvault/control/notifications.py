"""Notifications: turning vault events into deliveries that are retried until they land.

A sink (``notification_sinks``) plays the part of the SNS topic in AWS's PutBackupVaultNotifications:
a vault that subscribes its ARN to some event types gets those events delivered to the sink.
``dispatch_events`` reads the append-only event log after a cursor and creates one delivery per
(event, sink); ``deliver_due`` sends what is due, records every attempt, and retries failures with
exponential backoff until ``MAX_ATTEMPTS``; ``list_notification_deliveries`` shows operators the
deliveries with their attempts.

"Failures only" can be set on a sink and on a vault's notification settings (``FailuresOnly``, a
backvault extension): when either is set, only failure events reach the sink (see ``is_failure``).

The dispatcher rereads a window of events below its cursor: on PostgreSQL, ids are handed out before
commit, so an event may become visible after a higher id was already read. The unique
(event, sink) constraint makes the rereading harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Event
from backvault.control.catalog.models import BackupVault
from backvault.control.catalog.notification_models import (
    EventCursor,
    NotificationAttempt,
    NotificationDelivery,
    NotificationSink,
)
from backvault.control.context import ServiceContext
from backvault.control.notification_senders import DeliveryError, send_email, send_slack, send_webhook
from backvault.control.notification_sinks import (
    SINK_TYPES,
    create_notification_sink,
    delete_notification_sink,
    describe_notification_sink,
    get_sink_row,
    list_notification_sinks,
    sink_arn,
    unwrap_secret,
    update_notification_sink,
)
from backvault.control.pagination import paginate
from backvault.domain.errors import InvalidParameterValueException

# The sink services lived here first; callers may still import them from this module.
__all__ = [
    "DELIVERY_STATUSES",
    "MAX_ATTEMPTS",
    "SINK_TYPES",
    "DeliveryReport",
    "create_notification_sink",
    "delete_notification_sink",
    "deliver_due",
    "delivery_history",
    "describe_notification_sink",
    "dispatch_events",
    "is_failure",
    "list_notification_deliveries",
    "list_notification_sinks",
    "retry_delay",
    "run_notifications",
    "sink_arn",
    "update_notification_sink",
]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
FIRST_RETRY = timedelta(seconds=30)
LAST_RETRY = timedelta(hours=1)
REREAD_WINDOW = 1000  # events below the cursor looked at again (see the module docstring)
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED")
_CURSOR = "notifications"
_FAILURE_WORDS = ("FAILED", "EXPIRED", "ABORTED", "REFUSED")
# A job's COMPLETED event also ends jobs that did not succeed (AWS sends it for every end state).
_FAILED_STATES = frozenset({"FAILED", "EXPIRED", "ABORTED", "PARTIAL"})


def is_failure(event_type: str, detail: Mapping[str, Any] | None = None) -> bool:
    """True for events a "failures only" subscriber wants: failed, expired, aborted or refused work."""
    if any(word in event_type for word in _FAILURE_WORDS):
        return True
    return str((detail or {}).get("State", "")) in _FAILED_STATES


@dataclass(frozen=True)
class _Subscription:
    sink: NotificationSink
    events: frozenset[str]
    failures_only: bool  # the vault's or the sink's

    def wants(self, event: Event) -> bool:
        if event.event_type not in self.events:
            return False
        return not self.failures_only or is_failure(event.event_type, event.detail)


# --- dispatching events to deliveries --------------------------------------------------------------


def dispatch_events(context: ServiceContext, *, batch: int = 500) -> int:
    """Create deliveries for the vault events after the cursor; returns how many were created."""
    created = 0
    with context.catalog.transaction() as session:
        cursor = session.get(EventCursor, _CURSOR, with_for_update=True)
        if cursor is None:
            cursor = EventCursor(name=_CURSOR, last_event_id=0)
            session.add(cursor)
        events = session.scalars(
            select(Event)
            .where(Event.id > cursor.last_event_id - REREAD_WINDOW, Event.vault_name.is_not(None))
            .order_by(Event.id)
            .limit(batch + REREAD_WINDOW)
        ).all()
        subscriptions = _subscriptions(session)
        seen = _already_delivered(session, [event.id for event in events])
        for event in events:
            subscription = subscriptions.get(event.vault_name or "")
            if subscription is None or not subscription.wants(event):
                continue
            if (event.id, subscription.sink.name) in seen:
                continue
            session.add(
                NotificationDelivery(
                    event_id=event.id,
                    sink_name=subscription.sink.name,
                    status="PENDING",
                    attempts=0,
                    next_attempt_at=context.now(),
                    creation_date=context.now(),
                )
            )
            created += 1
        if events:
            cursor.last_event_id = max(cursor.last_event_id, events[-1].id)
    return created


def _subscriptions(session: Session) -> dict[str, _Subscription]:
    """Map vault name -> the sink its notification configuration names, its events and filter."""
    sinks = {row.arn: row for row in session.scalars(select(NotificationSink))}
    result: dict[str, _Subscription] = {}
    for vault in session.scalars(select(BackupVault).where(BackupVault.notifications.is_not(None))):
        settings = vault.notifications or {}
        sink = sinks.get(settings.get("SNSTopicArn", ""))
        if sink is not None:
            result[vault.name] = _Subscription(
                sink,
                frozenset(settings.get("BackupVaultEvents", [])),
                bool(settings.get("FailuresOnly")) or sink.failures_only,
            )
    return result


def _already_delivered(session: Session, event_ids: list[int]) -> set[tuple[int, str]]:
    if not event_ids:
        return set()
    rows = session.execute(
        select(NotificationDelivery.event_id, NotificationDelivery.sink_name).where(
            NotificationDelivery.event_id >= event_ids[0], NotificationDelivery.event_id <= event_ids[-1]
        )
    )
    return {(event_id, sink_name) for event_id, sink_name in rows}


# --- delivering ----------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What one pass of deliver_due did."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    attempt: int
    sink: dict[str, Any]
    secret: bytes | None
    payload: dict[str, Any]


def deliver_due(context: ServiceContext, *, limit: int = 100, timeout: float = 10) -> DeliveryReport:
    """Send every due delivery once; failures are retried later with backoff, then given up."""
    report = DeliveryReport()
    for claimed in _claim_due(context, limit, timeout):
        try:
            _send(claimed, timeout)
        except DeliveryError as error:
            _record(context, claimed, str(error), report)
        else:
            _record(context, claimed, None, report)
    return report


def run_notifications(context: ServiceContext) -> DeliveryReport:
    """Dispatch new events and deliver what is due (the scheduler calls this every tick)."""
    dispatch_events(context)
    return deliver_due(context)


def _claim_due(context: ServiceContext, limit: int, timeout: float) -> list[_Claimed]:
    """Take due deliveries, pushing their next attempt out so another server does not send them too."""
    claimed: list[_Claimed] = []
    now = context.now()
    with context.catalog.transaction() as session:
        rows = session.scalars(
            select(NotificationDelivery)
            .where(NotificationDelivery.status == "PENDING", NotificationDelivery.next_attempt_at <= now)
            .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            sink = session.get(NotificationSink, row.sink_name)
            event = session.get(Event, row.event_id)
            if sink is None or event is None:
                row.status, row.last_error = "FAILED", "the sink or the event no longer exists"
                continue
            secret = unwrap_secret(context, sink)
            row.attempts += 1
            row.next_attempt_at = now + timedelta(seconds=timeout * 3)
            claimed.append(
                _Claimed(
                    row.id, row.attempts, {"type": sink.sink_type, **sink.settings}, secret, _payload(event)
                )
            )
    return claimed


def _payload(event: Event) -> dict[str, Any]:
    return {
        "EventId": event.id,
        "EventType": event.event_type,
        "OccurredAt": event.occurred_at.isoformat(),
        "BackupVaultName": event.vault_name,
        "ResourceArn": event.resource_arn,
        "JobId": event.job_id,
        "Detail": dict(event.detail),
    }


def _summary(payload: dict[str, Any]) -> str:
    parts = [f"backvault: {payload['EventType']} in vault {payload['BackupVaultName']}"]
    if payload.get("ResourceArn"):
        parts.append(f"resource {payload['ResourceArn']}")
    if payload.get("JobId"):
        parts.append(f"job {payload['JobId']}")
    message = payload["Detail"].get("StatusMessage") or payload["Detail"].get("message")
    return ", ".join(parts) + (f": {message}" if message else "")


def _send(claimed: _Claimed, timeout: float) -> None:
    sink = claimed.sink
    if sink["type"] == "webhook":
        send_webhook(sink["Url"], claimed.payload, claimed.secret, timeout=timeout)
    elif sink["type"] == "slack":
        send_slack(sink["Url"], _summary(claimed.payload), timeout=timeout)
    else:
        send_email(
            host=sink["SmtpHost"],
            port=int(sink["SmtpPort"]),
            sender=sink["Sender"],
            recipients=sink["Recipients"],
            subject=_summary(claimed.payload)[:200],
            text=_summary(claimed.payload) + "\n\n" + repr(claimed.payload["Detail"]),
            username=sink.get("Username"),
            password=claimed.secret.decode() if claimed.secret else None,
            starttls=bool(sink.get("StartTls")),
            timeout=timeout,
        )


def _record(context: ServiceContext, claimed: _Claimed, error: str | None, report: DeliveryReport) -> None:
    now = context.now()
    with context.catalog.transaction() as session:
        row = session.get(NotificationDelivery, claimed.delivery_id)
        if row is None:
            return
        session.add(
            NotificationAttempt(delivery_id=row.id, attempted_at=now, succeeded=error is None, detail=error)
        )
        if error is None:
            row.status, row.delivered_at, row.last_error = "DELIVERED", now, None
            report.delivered += 1
            return
        row.last_error = error
        report.errors.append(error)
        logger.warning(
            "notification %s to sink %s failed (attempt %d): %s", row.id, row.sink_name, row.attempts, error
        )
        if claimed.attempt >= MAX_ATTEMPTS:
            row.status = "FAILED"
            report.failed += 1
        else:
            row.next_attempt_at = now + retry_delay(claimed.attempt)
            report.retrying += 1


def retry_delay(attempt: int) -> timedelta:
    """Backoff after the given failed attempt: 30 s, 1 min, 2 min... capped at an hour."""
    delay: timedelta = FIRST_RETRY * (2 ** (attempt - 1))
    return min(delay, LAST_RETRY)


def delivery_history(context: ServiceContext, *, event_id: int | None = None) -> list[dict[str, Any]]:
    """Return deliveries with every attempt (newest first), for audits and the dashboard."""
    with context.catalog.transaction() as session:
        query = select(NotificationDelivery).order_by(NotificationDelivery.id.desc())
        if event_id is not None:
            query = query.where(NotificationDelivery.event_id == event_id)
        result = []
        for row in session.scalars(query.limit(500)):
            attempts = session.scalars(
                select(NotificationAttempt)
                .where(NotificationAttempt.delivery_id == row.id)
                .order_by(NotificationAttempt.id)
            )
            result.append(
                {
                    "DeliveryId": row.id,
                    "EventId": row.event_id,
                    "SinkName": row.sink_name,
                    "Status": row.status,
                    "Attempts": [
                        {"AttemptedAt": a.attempted_at, "Succeeded": a.succeeded, "Detail": a.detail}
                        for a in attempts
                    ],
                    "LastError": row.last_error,
                }
            )
        return result


def list_notification_deliveries(
    context: ServiceContext,
    *,
    sink_name: str | None = None,
    status: str | None = None,
    max_results: int | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    """List deliveries newest first with their attempts: sink, event, status, last error, next attempt."""
    query = select(NotificationDelivery)
    if status is not None:
        if status not in DELIVERY_STATUSES:
            raise InvalidParameterValueException(
                f"Status {status!r} is not valid; use one of {', '.join(DELIVERY_STATUSES)}."
            )
        query = query.where(NotificationDelivery.status == status)
    with context.catalog.transaction() as session:
        if sink_name is not None:
            get_sink_row(session, sink_name)  # a mistyped sink is an error, not an empty list
            query = query.where(NotificationDelivery.sink_name == sink_name)
        rows, token = paginate(
            session,
            query,
            [NotificationDelivery.id],
            operation="ListNotificationDeliveries",
            max_results=max_results,
            next_token=next_token,
            descending=True,
        )
        ids = [row.id for row in rows]
        events = {
            event.id: event
            for event in session.scalars(select(Event).where(Event.id.in_([row.event_id for row in rows])))
        }
        attempts: dict[int, list[dict[str, Any]]] = {delivery_id: [] for delivery_id in ids}
        for attempt in session.scalars(
            select(NotificationAttempt)
            .where(NotificationAttempt.delivery_id.in_(ids))
            .order_by(NotificationAttempt.id)
        ):
            attempts[attempt.delivery_id].append(
                {
                    "AttemptDate": attempt.attempted_at,
                    "Succeeded": attempt.succeeded,
                    "Detail": attempt.detail,
                }
            )
        body: dict[str, Any] = {
            "Deliveries": [_delivery_to_aws(row, events.get(row.event_id), attempts[row.id]) for row in rows]
        }
        if token:
            body["NextToken"] = token
        return body


def _delivery_to_aws(
    row: NotificationDelivery, event: Event | None, attempts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "DeliveryId": row.id,
        "SinkName": row.sink_name,
        "EventId": row.event_id,
        "EventType": event.event_type if event is not None else None,
        "BackupVaultName": event.vault_name if event is not None else None,
        "JobId": event.job_id if event is not None else None,
        "Status": row.status,
        "AttemptCount": row.attempts,
        "LastError": row.last_error,
        "NextAttemptDate": row.next_attempt_at if row.status == "PENDING" else None,
        "CreationDate": row.creation_date,
        "DeliveredDate": row.delivered_at,
        "Attempts": attempts,
    }
