"""Every catalog table, imported so that ``metadata`` is complete (migrations compare against it)."""

from __future__ import annotations

from sqlalchemy import MetaData

from backvault.control.catalog import activity, models
from backvault.control.catalog.base import Base

metadata: MetaData = Base.metadata
__all__ = ["activity", "metadata", "models"]
