"""The job engine: a per-job attempt limit, and at most one running backup per resource.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A partial unique index: two workers claiming backups of one resource in the same instant cannot both
# commit. SQLite (3.8+) and PostgreSQL both support the WHERE clause.
_ACTIVE_BACKUP = "job_type = 'BACKUP' AND state IN ('RUNNING', 'ABORTING')"


def upgrade() -> None:
    """Add jobs.max_attempts, the one-active-backup-per-resource index and the idempotency index."""
    op.add_column("jobs", sa.Column("max_attempts", sa.Integer(), nullable=True))
    op.create_index(
        "ux_jobs_active_backup_resource",
        "jobs",
        ["resource_arn"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE_BACKUP),
        postgresql_where=sa.text(_ACTIVE_BACKUP),
    )
    # StartBackupJob and the scheduler look jobs up by idempotency token.
    op.create_index(op.f("ix_jobs_idempotency_token"), "jobs", ["idempotency_token"])


def downgrade() -> None:
    """Drop the indexes and the column."""
    op.drop_index(op.f("ix_jobs_idempotency_token"), table_name="jobs")
    op.drop_index("ux_jobs_active_backup_resource", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("max_attempts")
