"""Snapshots waiting to be forgotten and pruned (recovery point deletion, expiry, cold moves).

Revision ID: 0004
Revises: 0003
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_VAULT = sa.String(50)
_ID = sa.String(64)
_STATE = sa.String(32)


def upgrade() -> None:
    """Create the snapshot_removals table."""
    op.create_table(
        "snapshot_removals",
        sa.Column("id", _ID, nullable=False),
        sa.Column("vault_name", _VAULT, nullable=False),
        sa.Column("tier", _STATE, nullable=False),
        sa.Column("snapshot_id", _ID, nullable=False),
        sa.Column("recovery_point_arn", sa.Text(), nullable=True),
        sa.Column("reason", _STATE, nullable=False),
        sa.Column("state", _STATE, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_removals")),
    )
    op.create_index(op.f("ix_snapshot_removals_vault_name"), "snapshot_removals", ["vault_name"])
    op.create_index(op.f("ix_snapshot_removals_state"), "snapshot_removals", ["state"])


def downgrade() -> None:
    """Drop the snapshot_removals table."""
    op.drop_index(op.f("ix_snapshot_removals_state"), table_name="snapshot_removals")
    op.drop_index(op.f("ix_snapshot_removals_vault_name"), table_name="snapshot_removals")
    op.drop_table("snapshot_removals")
