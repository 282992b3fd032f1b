"""The catalog: SQLAlchemy models of everything the control plane knows, its migrations and its database."""

from __future__ import annotations

from backvault.control.catalog.activity import Event, Job, JobType, Lease, LegalHold, RecoveryPoint
from backvault.control.catalog.base import Base
from backvault.control.catalog.database import (
    Catalog,
    CatalogUnavailableError,
    open_catalog,
    resolve_database_url,
)
from backvault.control.catalog.migrate import current_revision, head_revision, upgrade_catalog
from backvault.control.catalog.models import (
    BackupPlan,
    BackupPlanVersion,
    BackupSelection,
    BackupVault,
    ProtectedResource,
    SourceEndpoint,
    StorageLocation,
)

__all__ = [
    "BackupPlan",
    "BackupPlanVersion",
    "BackupSelection",
    "BackupVault",
    "Base",
    "Catalog",
    "CatalogUnavailableError",
    "Event",
    "Job",
    "JobType",
    "Lease",
    "LegalHold",
    "ProtectedResource",
    "RecoveryPoint",
    "SourceEndpoint",
    "StorageLocation",
    "current_revision",
    "head_revision",
    "open_catalog",
    "resolve_database_url",
    "upgrade_catalog",
]
