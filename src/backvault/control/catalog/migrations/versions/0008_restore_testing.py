"""Restore testing: plans, selections and restore test runs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_PLAN_NAME = sa.String(50)
_VAULT_NAME = sa.String(50)
_NAME = sa.String(64)
_ID = sa.String(64)
_STATE = sa.String(32)


def upgrade() -> None:
    """Create the restore testing tables."""
    op.create_table(
        "restore_testing_plans",
        sa.Column("name", _PLAN_NAME, nullable=False),
        sa.Column("id", _ID, nullable=False),
        sa.Column("arn", sa.Text(), nullable=False),
        sa.Column("schedule_expression", sa.Text(), nullable=False),
        sa.Column("schedule_timezone", _NAME, nullable=False),
        sa.Column("start_window_hours", sa.Integer(), nullable=False),
        sa.Column("recovery_point_selection", sa.JSON(), nullable=False),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("creator_request_id", sa.Text(), nullable=True),
        sa.Column("last_update_time", _TIME, nullable=True),
        sa.Column("last_execution_time", _TIME, nullable=True),
        sa.Column("schedule_anchor", _TIME, nullable=False),
        sa.Column("evaluated_until", _TIME, nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("validation_hook", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_restore_testing_plans")),
        sa.UniqueConstraint("id", name=op.f("uq_restore_testing_plans_id")),
        sa.UniqueConstraint("arn", name=op.f("uq_restore_testing_plans_arn")),
    )
    op.create_index(
        op.f("ix_restore_testing_plans_creator_request_id"), "restore_testing_plans", ["creator_request_id"]
    )
    op.create_table(
        "restore_testing_selections",
        sa.Column("plan_name", _PLAN_NAME, nullable=False),
        sa.Column("name", _PLAN_NAME, nullable=False),
        sa.Column("protected_resource_type", _STATE, nullable=False),
        sa.Column("protected_resource_arns", sa.JSON(), nullable=False),
        sa.Column("protected_resource_conditions", sa.JSON(), nullable=True),
        sa.Column("restore_metadata_overrides", sa.JSON(), nullable=False),
        sa.Column("validation_window_hours", sa.Integer(), nullable=False),
        sa.Column("iam_role_arn", sa.Text(), nullable=False),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("creator_request_id", sa.Text(), nullable=True),
        sa.Column("update_time", _TIME, nullable=True),
        sa.Column("validation_hook", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_name"],
            ["restore_testing_plans.name"],
            name=op.f("fk_restore_testing_selections_plan_name_restore_testing_plans"),
        ),
        sa.PrimaryKeyConstraint("plan_name", "name", name=op.f("pk_restore_testing_selections")),
    )
    op.create_table(
        "restore_tests",
        sa.Column("id", _ID, nullable=False),
        sa.Column("plan_id", _ID, nullable=False),
        sa.Column("plan_name", _PLAN_NAME, nullable=False),
        sa.Column("plan_arn", sa.Text(), nullable=False),
        sa.Column("selection_name", _PLAN_NAME, nullable=False),
        sa.Column("scheduled_time", _TIME, nullable=False),
        sa.Column("resource_arn", sa.Text(), nullable=False),
        sa.Column("resource_type", _STATE, nullable=False),
        sa.Column("recovery_point_arn", sa.Text(), nullable=True),
        sa.Column("vault_name", _VAULT_NAME, nullable=True),
        sa.Column("restore_job_id", _ID, nullable=True),
        sa.Column("state", _STATE, nullable=False),
        sa.Column("endpoint_name", _NAME, nullable=True),
        sa.Column("scratch_name", sa.Text(), nullable=True),
        sa.Column("scratch_owned", sa.Boolean(), nullable=False),
        sa.Column("validation_window_hours", sa.Integer(), nullable=False),
        sa.Column("validation_hook", sa.JSON(), nullable=True),
        sa.Column("validation_status", _STATE, nullable=True),
        sa.Column("validation_message", sa.Text(), nullable=True),
        sa.Column("reported_status", _STATE, nullable=True),
        sa.Column("reported_message", sa.Text(), nullable=True),
        sa.Column("validation_deadline", _TIME, nullable=True),
        sa.Column("deletion_status", _STATE, nullable=True),
        sa.Column("deletion_message", sa.Text(), nullable=True),
        sa.Column("cleanup_attempts", sa.Integer(), nullable=False),
        sa.Column("restore_seconds", sa.Float(), nullable=True),
        sa.Column("claim_owner", sa.String(255), nullable=True),
        sa.Column("claim_expires_at", _TIME, nullable=True),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("completion_time", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_tests")),
        sa.UniqueConstraint(
            "plan_id",
            "selection_name",
            "resource_arn",
            "scheduled_time",
            name=op.f("uq_restore_tests_run"),
        ),
    )
    op.create_index(op.f("ix_restore_tests_plan_id"), "restore_tests", ["plan_id"])
    op.create_index(op.f("ix_restore_tests_plan_name"), "restore_tests", ["plan_name"])
    op.create_index(op.f("ix_restore_tests_restore_job_id"), "restore_tests", ["restore_job_id"])
    op.create_index(op.f("ix_restore_tests_state"), "restore_tests", ["state"])


def downgrade() -> None:
    """Drop the restore testing tables."""
    op.drop_table("restore_tests")
    op.drop_table("restore_testing_selections")
    op.drop_table("restore_testing_plans")
