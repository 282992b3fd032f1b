"""Catalog tables of the audit: frameworks, their latest control evaluations, report plans and jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base, JsonDocument
from backvault.control.catalog.models import ID, NAME, STATE

# AWS allows framework and report plan names of up to 256 characters.
AUDIT_NAME = 256
CONTROL_NAME = 64


class AuditFramework(Base):
    """An audit framework (AWS ``Framework``): controls with their parameters and scopes."""

    __tablename__ = "audit_frameworks"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(AUDIT_NAME), unique=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    # FrameworkControls in AWS's shape, as validated (parameters as given, not merged with defaults).
    controls: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument)
    deployment_status: Mapped[str] = mapped_column(String(STATE))
    creation_time: Mapped[datetime]
    idempotency_token: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    # How far the event log had got when the stored evaluations were made, and when that was.
    evaluated_through_event_id: Mapped[int | None] = mapped_column(BigInteger)
    last_evaluation_time: Mapped[datetime | None]


class AuditEvaluation(Base):
    """The latest verdict of one control of a framework on one resource (plan, vault)."""

    __tablename__ = "audit_evaluations"
    __table_args__ = (UniqueConstraint("framework_id", "control_name", "resource_arn"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    framework_id: Mapped[str] = mapped_column(
        String(ID), ForeignKey("audit_frameworks.id", ondelete="CASCADE"), index=True
    )
    control_name: Mapped[str] = mapped_column(String(CONTROL_NAME))
    resource_arn: Mapped[str] = mapped_column(Text)
    resource_type: Mapped[str] = mapped_column(String(NAME))
    compliance_status: Mapped[str] = mapped_column(String(STATE))  # COMPLIANT or NON_COMPLIANT
    reason: Mapped[str] = mapped_column(Text)
    evaluation_time: Mapped[datetime]
    # When the status last changed: how long a resource has been non-compliant.
    status_since: Mapped[datetime]


class ReportPlan(Base):
    """A report plan (AWS ``ReportPlan``): which report, in which formats, written where."""

    __tablename__ = "report_plans"

    name: Mapped[str] = mapped_column(String(AUDIT_NAME), primary_key=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    # ReportDeliveryChannel and ReportSetting in AWS's shape, as validated.
    delivery_channel: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    report_setting: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    deployment_status: Mapped[str] = mapped_column(String(STATE))
    creation_time: Mapped[datetime]
    last_attempted_execution_time: Mapped[datetime | None]
    last_successful_execution_time: Mapped[datetime | None]
    idempotency_token: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)


class ReportJob(Base):
    """One run of a report plan (AWS ``ReportJob``); kept after its plan is deleted, like job history."""

    __tablename__ = "report_jobs"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    report_plan_name: Mapped[str] = mapped_column(String(AUDIT_NAME), index=True)
    report_plan_arn: Mapped[str] = mapped_column(Text)
    report_template: Mapped[str] = mapped_column(String(NAME))
    creation_time: Mapped[datetime] = mapped_column(index=True)
    completion_time: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(STATE))
    status_message: Mapped[str | None] = mapped_column(Text)
    location_name: Mapped[str] = mapped_column(String(NAME))
    s3_keys: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    idempotency_token: Mapped[str | None] = mapped_column(Text)
