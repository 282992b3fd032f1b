"""Audit: frameworks, their latest control evaluations, report plans and report jobs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_AUDIT_NAME = sa.String(256)
_CONTROL = sa.String(64)
_NAME = sa.String(64)
_ID = sa.String(64)
_STATE = sa.String(32)
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the audit tables."""
    op.create_table(
        "audit_frameworks",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", _AUDIT_NAME, nullable=False),
        sa.Column("arn", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("controls", sa.JSON(), nullable=False),
        sa.Column("deployment_status", _STATE, nullable=False),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("idempotency_token", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("evaluated_through_event_id", sa.BigInteger(), nullable=True),
        sa.Column("last_evaluation_time", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_frameworks")),
        sa.UniqueConstraint("name", name=op.f("uq_audit_frameworks_name")),
        sa.UniqueConstraint("arn", name=op.f("uq_audit_frameworks_arn")),
    )
    op.create_table(
        "audit_evaluations",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("framework_id", _ID, nullable=False),
        sa.Column("control_name", _CONTROL, nullable=False),
        sa.Column("resource_arn", sa.Text(), nullable=False),
        sa.Column("resource_type", _NAME, nullable=False),
        sa.Column("compliance_status", _STATE, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evaluation_time", _TIME, nullable=False),
        sa.Column("status_since", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["framework_id"],
            ["audit_frameworks.id"],
            name=op.f("fk_audit_evaluations_framework_id_audit_frameworks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_evaluations")),
        sa.UniqueConstraint(
            "framework_id",
            "control_name",
            "resource_arn",
            name=op.f("uq_audit_evaluations_framework_id_control_name_resource_arn"),
        ),
    )
    op.create_index(op.f("ix_audit_evaluations_framework_id"), "audit_evaluations", ["framework_id"])
    op.create_table(
        "report_plans",
        sa.Column("name", _AUDIT_NAME, nullable=False),
        sa.Column("arn", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("delivery_channel", sa.JSON(), nullable=False),
        sa.Column("report_setting", sa.JSON(), nullable=False),
        sa.Column("deployment_status", _STATE, nullable=False),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("last_attempted_execution_time", _TIME, nullable=True),
        sa.Column("last_successful_execution_time", _TIME, nullable=True),
        sa.Column("idempotency_token", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_report_plans")),
        sa.UniqueConstraint("arn", name=op.f("uq_report_plans_arn")),
    )
    op.create_table(
        "report_jobs",
        sa.Column("id", _ID, nullable=False),
        sa.Column("report_plan_name", _AUDIT_NAME, nullable=False),
        sa.Column("report_plan_arn", sa.Text(), nullable=False),
        sa.Column("report_template", _NAME, nullable=False),
        sa.Column("creation_time", _TIME, nullable=False),
        sa.Column("completion_time", _TIME, nullable=True),
        sa.Column("status", _STATE, nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("location_name", _NAME, nullable=False),
        sa.Column("s3_keys", sa.JSON(), nullable=False),
        sa.Column("idempotency_token", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_jobs")),
    )
    op.create_index(op.f("ix_report_jobs_report_plan_name"), "report_jobs", ["report_plan_name"])
    op.create_index(op.f("ix_report_jobs_creation_time"), "report_jobs", ["creation_time"])


def downgrade() -> None:
    """Drop the audit tables."""
    op.drop_table("report_jobs")
    op.drop_table("report_plans")
    op.drop_table("audit_evaluations")
    op.drop_table("audit_frameworks")
