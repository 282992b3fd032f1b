"""Every catalog table, imported so that ``metadata`` is complete (migrations compare against it)."""

from __future__ import annotations

from sqlalchemy import MetaData

from backvault.control.catalog import (
    activity,
    audit_models,
    identity_models,
    models,
    notification_models,
    removals,
    restore_testing_models,
    scheduling,
)
from backvault.control.catalog.base import Base

metadata: MetaData = Base.metadata
__all__ = [
    "activity",
    "audit_models",
    "identity_models",
    "metadata",
    "models",
    "notification_models",
    "removals",
    "restore_testing_models",
    "scheduling",
]
