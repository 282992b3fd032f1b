"""Catalog table of snapshots waiting to leave a repository (the lifecycle engine's work queue).

A recovery point's row and its snapshot live in two systems that share no transaction. Deleting a
point, expiring it or moving it to cold storage therefore records a removal in the same catalog
transaction that changes the point; the snapshot is forgotten and the repository pruned afterwards,
and a crash in between only delays that work to the next lifecycle run.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base
from backvault.control.catalog.models import ID, STATE, VAULT_NAME


class RemovalState(StrEnum):
    """PENDING: forget the snapshot; FORGOTTEN: prune the repository; PRUNED: wait for the sweep."""

    PENDING = "PENDING"
    FORGOTTEN = "FORGOTTEN"
    PRUNED = "PRUNED"


class SnapshotRemoval(Base):
    """One snapshot to forget in one vault's warm or cold repository, and how far that got."""

    __tablename__ = "snapshot_removals"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    # A plain name: a removal outlives the vault (the engine drops it once the vault is gone).
    vault_name: Mapped[str] = mapped_column(String(VAULT_NAME), index=True)
    tier: Mapped[str] = mapped_column(String(STATE))  # WARM or COLD
    snapshot_id: Mapped[str] = mapped_column(String(ID))
    recovery_point_arn: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(STATE))  # DELETED, EXPIRED or MOVED_TO_COLD
    state: Mapped[str] = mapped_column(String(STATE), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
