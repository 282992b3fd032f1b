"""Notifications: sinks, and turning vault events into deliveries that are retried until they land.

A sink plays the part of the SNS topic in AWS's PutBackupVaultNotifications: its ARN is
``arn:aws:sns:REGION:ACCOUNT:NAME``, and a vault that subscribes that ARN to some event types gets
those events delivered to the sink. ``dispatch_events`` reads the append-only event log after a
cursor and creates one delivery per (event, sink); ``deliver_due`` sends what is due, records every
attempt, and retries failures with exponential backoff until ``MAX_ATTEMPTS``.

The dispatcher rereads a window of events below its cursor: on PostgreSQL, ids are handed out before
commit, so an event may become visible after a higher id was already read. The unique
(event, sink) constraint makes the rereading harmless.
"""

from __future__ import annotations

import logging
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
from backvault.control.pagination import paginate
from backvault.control.secrets import SecretError
from backvault.domain.arn import Arn
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidParameterValueException,
    ResourceNotFoundException,
)

logger = logging.getLogger(__name__)

SINK_TYPES = ("webhook", "slack", "email")
MAX_ATTEMPTS = 6
FIRST_RETRY = timedelta(seconds=30)
LAST_RETRY = timedelta(hours=1)
REREAD_WINDOW = 1000  # events below the cursor looked at again (see the module docstring)
_CURSOR = "notifications"
_FAILURE_WORDS = ("FAILED", "EXPIRED", "ABORTED", "REFUSED")


def _secret_purpose(sink_name: str) -> str:
    return f"notification-sink:{sink_name}"


def sink_arn(context: ServiceContext, name: str) -> str:
    """Return a sink's ARN (an SNS topic ARN, as vault notifications expect)."""
    arn_context = context.arn_context()
    return str(Arn(arn_context.partition, "sns", arn_context.region, arn_context.account, name))


# --- sinks ---------------------------------------------------------------------------------------


def create_notification_sink(
    context: ServiceContext,
    name: str,
    sink_type: str,
    *,
    url: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int = 25,
    sender: str | None = None,
    recipients: list[str] | None = None,
    username: str | None = None,
    starttls: bool = False,
    secret: str | None = None,
    failures_only: bool = False,
) -> dict[str, Any]:
    """Register a sink; ``secret`` (HMAC key or SMTP password) is stored only wrapped."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 64
        or not name.replace("-", "").replace("_", "").isalnum()
    ):
        raise InvalidParameterValueException(
            f"Sink name {name!r} is not valid: use 1 to 64 letters, digits, hyphens and underscores."
        )
    settings = _sink_settings(sink_type, url, smtp_host, smtp_port, sender, recipients, username, starttls)
    with context.catalog.transaction() as session:
        if session.get(NotificationSink, name) is not None:
            raise AlreadyExistsException(
                f"Notification sink {name!r} already exists.", Arn=sink_arn(context, name)
            )
        row = NotificationSink(
            name=name,
            arn=sink_arn(context, name),
            sink_type=sink_type,
            settings=settings,
            wrapped_secret=context.master_secret.wrap(secret.encode(), _secret_purpose(name))
            if secret
            else None,
            failures_only=failures_only,
            creation_date=context.now(),
        )
        session.add(row)
        return _sink_to_aws(row)


def describe_notification_sink(context: ServiceContext, name: str) -> dict[str, Any]:
    """Return one sink (never its secret)."""
    with context.catalog.transaction() as session:
        return _sink_to_aws(_get_sink(session, name))


def list_notification_sinks(
    context: ServiceContext, *, max_results: int | None = None, next_token: str | None = None
) -> dict[str, Any]:
    """List sinks by name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(NotificationSink),
            [NotificationSink.name],
            operation="ListNotificationSinks",
            max_results=max_results,
            next_token=next_token,
        )
        body: dict[str, Any] = {"Sinks": [_sink_to_aws(row) for row in rows]}
        if token:
            body["NextToken"] = token
        return body


def delete_notification_sink(context: ServiceContext, name: str) -> dict[str, Any]:
    """Delete a sink and its delivery history."""
    with context.catalog.transaction() as session:
        row = _get_sink(session, name)
        for delivery in session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.sink_name == name)
        ):
            session.delete(delivery)
        session.flush()
        session.delete(row)
        return {}


def _get_sink(session: Session, name: str) -> NotificationSink:
    row = session.get(NotificationSink, name)
    if row is None:
        raise ResourceNotFoundException(f"Notification sink {name!r} does not exist.")
    return row


def _sink_settings(
    sink_type: str,
    url: str | None,
    smtp_host: str | None,
    smtp_port: int,
    sender: str | None,
    recipients: list[str] | None,
    username: str | None,
    starttls: bool,
) -> dict[str, Any]:
    if sink_type not in SINK_TYPES:
        raise InvalidParameterValueException(
            f"Sink type {sink_type!r} is not valid; use one of {', '.join(SINK_TYPES)}."
        )
    if sink_type in ("webhook", "slack"):
        if not url or not url.startswith(("http://", "https://")):
            raise InvalidParameterValueException(
                f"A {sink_type} sink needs an http:// or https:// URL, got {url!r}."
            )
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise InvalidParameterValueException(
                "Put webhook credentials in the sink's secret, not in its URL."
            )
        return {"Url": url}
    if not smtp_host or not sender or not recipients:
        raise InvalidParameterValueException(
            "An email sink needs smtp_host, sender and at least one recipient."
        )
    if not 0 < smtp_port < 65536:
        raise InvalidParameterValueException(f"SMTP port {smtp_port} is out of range 1-65535.")
    return {
        "SmtpHost": smtp_host,
        "SmtpPort": smtp_port,
        "Sender": sender,
        "Recipients": list(recipients),
        "Username": username,
        "StartTls": starttls,
    }


def _sink_to_aws(row: NotificationSink) -> dict[str, Any]:
    return {
        "SinkName": row.name,
        "SinkArn": row.arn,
        "SinkType": row.sink_type,
        "Settings": dict(row.settings),
        "HasSecret": row.wrapped_secret is not None,
        "FailuresOnly": row.failures_only,
        "CreationDate": row.creation_date,
    }


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
            sink = subscriptions.get(event.vault_name or "", {}).get(event.event_type)
            if sink is None or (event.id, sink.name) in seen:
                continue
            if sink.failures_only and not any(word in event.event_type for word in _FAILURE_WORDS):
                continue
            session.add(
                NotificationDelivery(
                    event_id=event.id,
                    sink_name=sink.name,
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


def _subscriptions(session: Session) -> dict[str, dict[str, NotificationSink]]:
    """Map vault name -> event type -> the sink its notification configuration names."""
    sinks = {row.arn: row for row in session.scalars(select(NotificationSink))}
    result: dict[str, dict[str, NotificationSink]] = {}
    for vault in session.scalars(select(BackupVault).where(BackupVault.notifications.is_not(None))):
        settings = vault.notifications or {}
        sink = sinks.get(settings.get("SNSTopicArn", ""))
        if sink is not None:
            result[vault.name] = {event_type: sink for event_type in settings.get("BackupVaultEvents", [])}
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
            try:
                secret = (
                    context.master_secret.unwrap(sink.wrapped_secret, _secret_purpose(sink.name))
                    if sink.wrapped_secret
                    else None
                )
            except SecretError as error:
                raise DependencyFailureException(f"Notification sink {sink.name!r}: {error}") from None
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
