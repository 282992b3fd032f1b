"""Catalog tables of notifications: sinks (the "SNS topics" vaults subscribe), deliveries and attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base, JsonDocument
from backvault.control.catalog.models import NAME, STATE


class NotificationSink(Base):
    """Where notifications go: a webhook, a Slack-compatible webhook or an e-mail address."""

    __tablename__ = "notification_sinks"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    sink_type: Mapped[str] = mapped_column(String(STATE))
    # URL, or SMTP host/port/sender/recipients; never a secret.
    settings: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    # The HMAC key of a webhook or the SMTP password, wrapped by the master secret.
    wrapped_secret: Mapped[str | None] = mapped_column(Text)
    failures_only: Mapped[bool] = mapped_column(Boolean, default=False)
    creation_date: Mapped[datetime]


class NotificationDelivery(Base):
    """One event to send to one sink, retried with backoff until delivered or given up."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "sink_name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, index=True)
    sink_name: Mapped[str] = mapped_column(String(NAME), ForeignKey("notification_sinks.name"), index=True)
    status: Mapped[str] = mapped_column(String(STATE), index=True)  # PENDING, DELIVERED, FAILED
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    creation_date: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class NotificationAttempt(Base):
    """Every delivery attempt, kept for audit whether it worked or not."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("notification_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime]
    succeeded: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)


class EventCursor(Base):
    """How far a reader of the event log (the notification dispatcher) has got."""

    __tablename__ = "event_cursors"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
