"""Notifications: sinks, deliveries, delivery attempts and event cursors.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_NAME = sa.String(64)
_STATE = sa.String(32)
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the notification tables."""
    op.create_table(
        "notification_sinks",
        sa.Column("name", _NAME, nullable=False),
        sa.Column("arn", sa.Text(), nullable=False),
        sa.Column("sink_type", _STATE, nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("wrapped_secret", sa.Text(), nullable=True),
        sa.Column("failures_only", sa.Boolean(), nullable=False),
        sa.Column("creation_date", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notification_sinks")),
        sa.UniqueConstraint("arn", name=op.f("uq_notification_sinks_arn")),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("sink_name", _NAME, nullable=False),
        sa.Column("status", _STATE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("creation_date", _TIME, nullable=False),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["sink_name"],
            ["notification_sinks.name"],
            name=op.f("fk_notification_deliveries_sink_name_notification_sinks"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
        sa.UniqueConstraint(
            "event_id", "sink_name", name=op.f("uq_notification_deliveries_event_id_sink_name")
        ),
    )
    for column in ("event_id", "sink_name", "status", "next_attempt_at"):
        op.create_index(op.f(f"ix_notification_deliveries_{column}"), "notification_deliveries", [column])
    op.create_table(
        "notification_attempts",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", _TIME, nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["notification_deliveries.id"],
            name=op.f("fk_notification_attempts_delivery_id_notification_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_attempts")),
    )
    op.create_index(op.f("ix_notification_attempts_delivery_id"), "notification_attempts", ["delivery_id"])
    op.create_table(
        "event_cursors",
        sa.Column("name", _NAME, nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_cursors")),
    )


def downgrade() -> None:
    """Drop the notification tables."""
    op.drop_table("event_cursors")
    op.drop_table("notification_attempts")
    op.drop_table("notification_deliveries")
    op.drop_table("notification_sinks")
