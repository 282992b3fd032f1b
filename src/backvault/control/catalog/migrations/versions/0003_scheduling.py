"""The scheduler's per-rule evaluation marks.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_ID = sa.String(64)


def upgrade() -> None:
    """Create the schedule_marks table."""
    op.create_table(
        "schedule_marks",
        sa.Column("plan_id", _ID, nullable=False),
        sa.Column("rule_id", _ID, nullable=False),
        sa.Column("evaluated_until", _TIME, nullable=False),
        sa.Column("last_run_at", _TIME, nullable=True),
        sa.Column("last_skipped_at", _TIME, nullable=True),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["backup_plans.id"], name=op.f("fk_schedule_marks_plan_id_backup_plans")
        ),
        sa.PrimaryKeyConstraint("plan_id", "rule_id", name=op.f("pk_schedule_marks")),
    )


def downgrade() -> None:
    """Drop the schedule_marks table."""
    op.drop_table("schedule_marks")
