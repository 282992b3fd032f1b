"""Catalog tables of what operators configure: locations, vaults, plans, selections, endpoints, resources.

JSON columns are not mutation-tracked: code that changes a document assigns a new object, which is
also what keeps a stored plan version from being edited in place by accident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base, JsonDocument

NAME = 64  # location and endpoint names (ARN region and endpoint segments are at most 63)
VAULT_NAME = 50
PLAN_NAME = 50  # plan, rule and selection names
ID = 64
STATE = 32


class StorageLocation(Base):
    """Where vault repositories live; the name is backvault's "region" in ARNs."""

    __tablename__ = "storage_locations"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    location_type: Mapped[str] = mapped_column(String(STATE))  # "local" or "s3"
    path: Mapped[str | None] = mapped_column(Text)
    bucket: Mapped[str | None] = mapped_column(String(NAME))
    prefix: Mapped[str | None] = mapped_column(Text)
    endpoint_url: Mapped[str | None] = mapped_column(Text)
    s3_region: Mapped[str | None] = mapped_column(String(NAME))
    # The cold tier is either another location or, on S3, a storage class of this bucket.
    cold_location_name: Mapped[str | None] = mapped_column(
        String(NAME), ForeignKey("storage_locations.name"), index=True
    )
    cold_storage_class: Mapped[str | None] = mapped_column(String(STATE))
    creation_date: Mapped[datetime]


class BackupVault(Base):
    """A vault: one encrypted repository in a location, with its lock, access policy and notifications."""

    __tablename__ = "backup_vaults"

    name: Mapped[str] = mapped_column(String(VAULT_NAME), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    location_name: Mapped[str] = mapped_column(String(NAME), ForeignKey("storage_locations.name"), index=True)
    vault_type: Mapped[str] = mapped_column(String(STATE))
    vault_state: Mapped[str] = mapped_column(String(STATE))
    creation_date: Mapped[datetime]
    creator_request_id: Mapped[str | None] = mapped_column(Text)
    # EncryptionKeyArn as the client gave it: recorded for round trips; the repository's own key does
    # the encrypting.
    encryption_key_arn: Mapped[str | None] = mapped_column(Text)
    # The master-secret key that wrapped the passphrase, so a key rotation can find what to rewrap.
    encryption_key_reference: Mapped[str] = mapped_column(String(ID))
    wrapped_repository_passphrase: Mapped[str] = mapped_column(Text)
    repository_url: Mapped[str] = mapped_column(Text)
    # Kept in step by mapper events on RecoveryPoint (activity.py) so listing vaults needs no COUNT.
    number_of_recovery_points: Mapped[int] = mapped_column(BigInteger, default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    min_retention_days: Mapped[int | None] = mapped_column(Integer)
    max_retention_days: Mapped[int | None] = mapped_column(Integer)
    changeable_for_days: Mapped[int | None] = mapped_column(Integer)
    lock_date: Mapped[datetime | None]
    access_policy: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    notifications: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)


class BackupPlan(Base):
    """A backup plan; its content lives in versions, the row holds identity and deletion."""

    __tablename__ = "backup_plans"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(String(PLAN_NAME), index=True)
    # The name while the plan is not deleted, NULL after: a portable "unique among live plans" (NULLs
    # never collide in a unique constraint, on SQLite and PostgreSQL alike).
    active_name: Mapped[str | None] = mapped_column(String(PLAN_NAME), unique=True)
    current_version_id: Mapped[str] = mapped_column(String(ID))
    version_count: Mapped[int] = mapped_column(Integer)
    creation_date: Mapped[datetime]
    deletion_date: Mapped[datetime | None]
    last_execution_date: Mapped[datetime | None]
    creator_request_id: Mapped[str | None] = mapped_column(Text, index=True)
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)


class BackupPlanVersion(Base):
    """One immutable version of a plan's document (AWS ``BackupPlan`` with RuleIds)."""

    __tablename__ = "backup_plan_versions"
    __table_args__ = (UniqueConstraint("plan_id", "version_number"),)

    version_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(ID), ForeignKey("backup_plans.id"), index=True)
    version_number: Mapped[int] = mapped_column(Integer)
    plan_name: Mapped[str] = mapped_column(String(PLAN_NAME))
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    creation_date: Mapped[datetime]


class BackupSelection(Base):
    """A resource assignment of a plan (AWS ``BackupSelection``)."""

    __tablename__ = "backup_selections"
    __table_args__ = (UniqueConstraint("plan_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(ID), ForeignKey("backup_plans.id"), index=True)
    name: Mapped[str] = mapped_column(String(PLAN_NAME))
    iam_role_arn: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    creation_date: Mapped[datetime]
    creator_request_id: Mapped[str | None] = mapped_column(Text)


class SourceEndpoint(Base):
    """A registered source (a PostgreSQL server, a directory root, an S3 endpoint...)."""

    __tablename__ = "source_endpoints"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    endpoint_type: Mapped[str] = mapped_column(String(STATE))
    connection: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    # A reference (a wrapped token or an environment variable name), never the secret in clear.
    credentials_reference: Mapped[str | None] = mapped_column(Text)
    default_tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    creation_date: Mapped[datetime]
    last_discovery_date: Mapped[datetime | None]


class ProtectedResource(Base):
    """A resource discovery found behind an endpoint (AWS ``ProtectedResource``)."""

    __tablename__ = "protected_resources"

    arn: Mapped[str] = mapped_column(Text, primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(STATE), index=True)
    endpoint_name: Mapped[str | None] = mapped_column(
        String(NAME), ForeignKey("source_endpoints.name"), index=True
    )
    resource_name: Mapped[str] = mapped_column(Text)
    native_tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    creation_date: Mapped[datetime]
    # Discovery stamps what it still sees, so a vanished resource is told apart from a new one.
    last_seen_date: Mapped[datetime | None]
    last_backup_time: Mapped[datetime | None]
    last_backup_vault_arn: Mapped[str | None] = mapped_column(Text)
    last_recovery_point_arn: Mapped[str | None] = mapped_column(Text)
