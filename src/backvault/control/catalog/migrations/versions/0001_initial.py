"""The initial catalog: locations, vaults, plans, selections, endpoints, resources, points, jobs, events.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision, spelled out: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
_NAME = sa.String(64)
_VAULT = sa.String(50)
_PLAN = sa.String(50)
_ID = sa.String(64)
_STATE = sa.String(32)


def _column(name: str, type_: sa.types.TypeEngine[Any], nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=nullable)


def _optional(name: str, type_: sa.types.TypeEngine[Any]) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=True)


def upgrade() -> None:
    """Create every table of the first catalog."""
    op.create_table(
        "storage_locations",
        _column("name", _NAME),
        _column("location_type", _STATE),
        _optional("path", sa.Text()),
        _optional("bucket", _NAME),
        _optional("prefix", sa.Text()),
        _optional("endpoint_url", sa.Text()),
        _optional("s3_region", _NAME),
        _optional("cold_location_name", _NAME),
        _optional("cold_storage_class", _STATE),
        _column("creation_date", _TIME),
        sa.ForeignKeyConstraint(
            ["cold_location_name"],
            ["storage_locations.name"],
            name=op.f("fk_storage_locations_cold_location_name_storage_locations"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_storage_locations")),
    )
    op.create_index(
        op.f("ix_storage_locations_cold_location_name"), "storage_locations", ["cold_location_name"]
    )

    op.create_table(
        "backup_vaults",
        _column("name", _VAULT),
        _column("arn", sa.Text()),
        _column("location_name", _NAME),
        _column("vault_type", _STATE),
        _column("vault_state", _STATE),
        _column("creation_date", _TIME),
        _optional("creator_request_id", sa.Text()),
        _optional("encryption_key_arn", sa.Text()),
        _column("encryption_key_reference", _ID),
        _column("wrapped_repository_passphrase", sa.Text()),
        _column("repository_url", sa.Text()),
        _column("number_of_recovery_points", sa.BigInteger()),
        _column("locked", sa.Boolean()),
        _optional("min_retention_days", sa.Integer()),
        _optional("max_retention_days", sa.Integer()),
        _optional("changeable_for_days", sa.Integer()),
        _optional("lock_date", _TIME),
        _optional("access_policy", sa.JSON()),
        _optional("notifications", sa.JSON()),
        _column("tags", sa.JSON()),
        sa.ForeignKeyConstraint(
            ["location_name"],
            ["storage_locations.name"],
            name=op.f("fk_backup_vaults_location_name_storage_locations"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_backup_vaults")),
        sa.UniqueConstraint("arn", name=op.f("uq_backup_vaults_arn")),
    )
    op.create_index(op.f("ix_backup_vaults_location_name"), "backup_vaults", ["location_name"])

    op.create_table(
        "backup_plans",
        _column("id", _ID),
        _column("arn", sa.Text()),
        _column("name", _PLAN),
        _optional("active_name", _PLAN),
        _column("current_version_id", _ID),
        _column("version_count", sa.Integer()),
        _column("creation_date", _TIME),
        _optional("deletion_date", _TIME),
        _optional("last_execution_date", _TIME),
        _optional("creator_request_id", sa.Text()),
        _column("tags", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_plans")),
        sa.UniqueConstraint("arn", name=op.f("uq_backup_plans_arn")),
        sa.UniqueConstraint("active_name", name=op.f("uq_backup_plans_active_name")),
    )
    op.create_index(op.f("ix_backup_plans_name"), "backup_plans", ["name"])
    op.create_index(op.f("ix_backup_plans_creator_request_id"), "backup_plans", ["creator_request_id"])

    op.create_table(
        "backup_plan_versions",
        _column("version_id", _ID),
        _column("plan_id", _ID),
        _column("version_number", sa.Integer()),
        _column("plan_name", _PLAN),
        _column("document", sa.JSON()),
        _column("creation_date", _TIME),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["backup_plans.id"], name=op.f("fk_backup_plan_versions_plan_id_backup_plans")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_backup_plan_versions")),
        sa.UniqueConstraint(
            "plan_id", "version_number", name=op.f("uq_backup_plan_versions_plan_id_version_number")
        ),
    )
    op.create_index(op.f("ix_backup_plan_versions_plan_id"), "backup_plan_versions", ["plan_id"])

    op.create_table(
        "backup_selections",
        _column("id", _ID),
        _column("plan_id", _ID),
        _column("name", _PLAN),
        _column("iam_role_arn", sa.Text()),
        _column("document", sa.JSON()),
        _column("creation_date", _TIME),
        _optional("creator_request_id", sa.Text()),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["backup_plans.id"], name=op.f("fk_backup_selections_plan_id_backup_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_selections")),
        sa.UniqueConstraint("plan_id", "name", name=op.f("uq_backup_selections_plan_id_name")),
    )
    op.create_index(op.f("ix_backup_selections_plan_id"), "backup_selections", ["plan_id"])

    op.create_table(
        "source_endpoints",
        _column("name", _NAME),
        _column("endpoint_type", _STATE),
        _column("connection", sa.JSON()),
        _optional("credentials_reference", sa.Text()),
        _column("default_tags", sa.JSON()),
        _column("creation_date", _TIME),
        _optional("last_discovery_date", _TIME),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_source_endpoints")),
    )

    op.create_table(
        "protected_resources",
        _column("arn", sa.Text()),
        _column("resource_type", _STATE),
        _optional("endpoint_name", _NAME),
        _column("resource_name", sa.Text()),
        _column("native_tags", sa.JSON()),
        _column("creation_date", _TIME),
        _optional("last_seen_date", _TIME),
        _optional("last_backup_time", _TIME),
        _optional("last_backup_vault_arn", sa.Text()),
        _optional("last_recovery_point_arn", sa.Text()),
        sa.ForeignKeyConstraint(
            ["endpoint_name"],
            ["source_endpoints.name"],
            name=op.f("fk_protected_resources_endpoint_name_source_endpoints"),
        ),
        sa.PrimaryKeyConstraint("arn", name=op.f("pk_protected_resources")),
    )
    op.create_index(op.f("ix_protected_resources_resource_type"), "protected_resources", ["resource_type"])
    op.create_index(op.f("ix_protected_resources_endpoint_name"), "protected_resources", ["endpoint_name"])

    _create_activity_tables()


def _create_activity_tables() -> None:
    op.create_table(
        "recovery_points",
        _column("id", _ID),
        _column("arn", sa.Text()),
        _column("vault_name", _VAULT),
        _column("resource_arn", sa.Text()),
        _column("resource_type", _STATE),
        _column("status", _STATE),
        _optional("status_message", sa.Text()),
        _column("creation_date", _TIME),
        _optional("completion_date", _TIME),
        _optional("backup_job_id", _ID),
        _optional("plan_id", _ID),
        _optional("plan_version_id", _ID),
        _optional("rule_id", _ID),
        _optional("source_backup_vault_arn", sa.Text()),
        _optional("lifecycle", sa.JSON()),
        _optional("move_to_cold_storage_at", _TIME),
        _optional("delete_at", _TIME),
        _column("storage_class", _STATE),
        _optional("snapshot_id", _ID),
        _column("backup_size_in_bytes", sa.BigInteger()),
        _optional("last_restore_time", _TIME),
        _column("tags", sa.JSON()),
        sa.ForeignKeyConstraint(
            ["vault_name"], ["backup_vaults.name"], name=op.f("fk_recovery_points_vault_name_backup_vaults")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_points")),
        sa.UniqueConstraint("arn", name=op.f("uq_recovery_points_arn")),
    )
    for column in ("vault_name", "resource_arn", "move_to_cold_storage_at", "delete_at"):
        op.create_index(op.f(f"ix_recovery_points_{column}"), "recovery_points", [column])

    op.create_table(
        "jobs",
        _column("id", _ID),
        _column("job_type", _STATE),
        _column("state", _STATE),
        _optional("status_message", sa.Text()),
        _optional("resource_arn", sa.Text()),
        _optional("resource_type", _STATE),
        _optional("vault_name", _VAULT),
        _optional("destination_vault_arn", sa.Text()),
        _optional("recovery_point_arn", sa.Text()),
        _optional("plan_id", _ID),
        _optional("plan_version_id", _ID),
        _optional("rule_id", _ID),
        _optional("parent_job_id", _ID),
        _optional("idempotency_token", sa.Text()),
        _column("parameters", sa.JSON()),
        _column("creation_date", _TIME),
        _optional("start_by", _TIME),
        _optional("complete_by", _TIME),
        _optional("started_date", _TIME),
        _optional("completion_date", _TIME),
        _optional("lease_owner", sa.String(255)),
        _optional("lease_expires_at", _TIME),
        _column("attempts", sa.Integer()),
        _optional("next_attempt_at", _TIME),
        _optional("error_message", sa.Text()),
        _column("bytes_transferred", sa.BigInteger()),
        _column("backup_size_in_bytes", sa.BigInteger()),
        _column("steps", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_claim", "jobs", ["state", "next_attempt_at"])
    for column in ("job_type", "resource_arn", "vault_name", "parent_job_id", "lease_expires_at"):
        op.create_index(op.f(f"ix_jobs_{column}"), "jobs", [column])

    op.create_table(
        "legal_holds",
        _column("id", _ID),
        _column("arn", sa.Text()),
        _column("title", sa.Text()),
        _optional("description", sa.Text()),
        _column("status", _STATE),
        _column("selection", sa.JSON()),
        _column("creation_date", _TIME),
        _optional("cancellation_date", _TIME),
        _optional("cancel_description", sa.Text()),
        _optional("retain_record_until", _TIME),
        _optional("idempotency_token", sa.Text()),
        _column("tags", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
        sa.UniqueConstraint("arn", name=op.f("uq_legal_holds_arn")),
    )
    op.create_index(op.f("ix_legal_holds_status"), "legal_holds", ["status"])

    op.create_table(
        "leases",
        _column("name", _NAME),
        _column("owner", sa.String(255)),
        _column("expires_at", _TIME),
        _column("acquired_at", _TIME),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )

    op.create_table(
        "events",
        # SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True
        ),
        _column("occurred_at", _TIME),
        _column("event_type", _NAME),
        _optional("resource_arn", sa.Text()),
        _optional("vault_name", _VAULT),
        _optional("job_id", _ID),
        _column("detail", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    for column in ("occurred_at", "event_type", "vault_name", "job_id"):
        op.create_index(op.f(f"ix_events_{column}"), "events", [column])


def downgrade() -> None:
    """Drop every table (children first)."""
    for table in (
        "events",
        "leases",
        "legal_holds",
        "jobs",
        "recovery_points",
        "protected_resources",
        "source_endpoints",
        "backup_selections",
        "backup_plan_versions",
        "backup_plans",
        "backup_vaults",
        "storage_locations",
    ):
        op.drop_table(table)
