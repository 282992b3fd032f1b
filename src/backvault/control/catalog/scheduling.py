"""Catalog table of the scheduler's memory: how far each backup rule's schedule has been evaluated."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base
from backvault.control.catalog.models import ID


class ScheduleMark(Base):
    """Per plan and rule: every scheduled run at or before ``evaluated_until`` has been handled.

    Handled means jobs were created for it, or it was skipped and recorded because its start window
    had passed. A restarted scheduler resumes from here, so it neither repeats nor loses a run.
    """

    __tablename__ = "schedule_marks"

    plan_id: Mapped[str] = mapped_column(String(ID), ForeignKey("backup_plans.id"), primary_key=True)
    # RuleIds survive plan updates as long as the rule keeps its name (control/plans.py).
    rule_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    evaluated_until: Mapped[datetime]
    last_run_at: Mapped[datetime | None]
    last_skipped_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
