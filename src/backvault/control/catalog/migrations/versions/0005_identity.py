"""Identity: API users, their inline policies and access keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_USER = sa.String(64)
_POLICY = sa.String(128)
_KEY = sa.String(32)
_STATE = sa.String(32)


def upgrade() -> None:
    """Create the identity tables."""
    op.create_table(
        "iam_users",
        sa.Column("name", _USER, nullable=False),
        sa.Column("user_id", _KEY, nullable=False),
        sa.Column("arn", sa.Text(), nullable=False),
        sa.Column("creation_date", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_iam_users")),
        sa.UniqueConstraint("user_id", name=op.f("uq_iam_users_user_id")),
        sa.UniqueConstraint("arn", name=op.f("uq_iam_users_arn")),
    )
    op.create_table(
        "iam_user_policies",
        sa.Column("user_name", _USER, nullable=False),
        sa.Column("policy_name", _POLICY, nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("update_date", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_name"], ["iam_users.name"], name=op.f("fk_iam_user_policies_user_name_iam_users")
        ),
        sa.PrimaryKeyConstraint("user_name", "policy_name", name=op.f("pk_iam_user_policies")),
    )
    op.create_table(
        "iam_access_keys",
        sa.Column("access_key_id", _KEY, nullable=False),
        sa.Column("user_name", _USER, nullable=False),
        sa.Column("wrapped_secret", sa.Text(), nullable=False),
        sa.Column("status", _STATE, nullable=False),
        sa.Column("creation_date", _TIME, nullable=False),
        sa.Column("last_used_date", _TIME, nullable=True),
        sa.Column("last_used_region", _USER, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_name"], ["iam_users.name"], name=op.f("fk_iam_access_keys_user_name_iam_users")
        ),
        sa.PrimaryKeyConstraint("access_key_id", name=op.f("pk_iam_access_keys")),
    )
    op.create_index(op.f("ix_iam_access_keys_user_name"), "iam_access_keys", ["user_name"])


def downgrade() -> None:
    """Drop the identity tables (children first)."""
    op.drop_table("iam_access_keys")
    op.drop_table("iam_user_policies")
    op.drop_table("iam_users")
