"""Catalog tables of restore testing: plans, their selections, and every restore test run.

A plan's ``evaluated_until`` is its scheduler mark: every scheduled run at or before it has been
handled (tests started, or skipped). Test rows outlive their plan (history, like jobs), so they name
plans by id and name without a foreign key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backvault.control.catalog.base import Base, JsonDocument
from backvault.control.catalog.models import ID, NAME, PLAN_NAME, STATE, VAULT_NAME


class RestoreTestingPlan(Base):
    """A restore testing plan (AWS ``RestoreTestingPlanForGet``) plus its schedule mark."""

    __tablename__ = "restore_testing_plans"

    name: Mapped[str] = mapped_column(String(PLAN_NAME), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID), unique=True)
    arn: Mapped[str] = mapped_column(Text, unique=True)
    schedule_expression: Mapped[str] = mapped_column(Text)
    schedule_timezone: Mapped[str] = mapped_column(String(NAME))
    start_window_hours: Mapped[int] = mapped_column(Integer)
    # RestoreTestingRecoveryPointSelection with its defaults filled in.
    recovery_point_selection: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    creation_time: Mapped[datetime]
    creator_request_id: Mapped[str | None] = mapped_column(Text, index=True)
    last_update_time: Mapped[datetime | None]
    last_execution_time: Mapped[datetime | None]
    # rate() schedules count from here: when the schedule was last set.
    schedule_anchor: Mapped[datetime]
    evaluated_until: Mapped[datetime]
    tags: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    # backvault's validation hook for every selection of the plan (a selection's own hook wins).
    validation_hook: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)


class RestoreTestingSelection(Base):
    """A restore testing selection (AWS ``RestoreTestingSelectionForGet``)."""

    __tablename__ = "restore_testing_selections"

    plan_name: Mapped[str] = mapped_column(
        String(PLAN_NAME), ForeignKey("restore_testing_plans.name"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(PLAN_NAME), primary_key=True)
    protected_resource_type: Mapped[str] = mapped_column(String(STATE))
    protected_resource_arns: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    protected_resource_conditions: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    restore_metadata_overrides: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    validation_window_hours: Mapped[int] = mapped_column(Integer)
    iam_role_arn: Mapped[str] = mapped_column(Text)
    creation_time: Mapped[datetime]
    creator_request_id: Mapped[str | None] = mapped_column(Text)
    update_time: Mapped[datetime | None]
    validation_hook: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)


# Restore tests name their scratch copies with this prefix; discovery never takes such a name for a resource.
SCRATCH_PREFIX = "bvtest-"
# A finished test (its scratch copy deleted, or given up on).
TEST_COMPLETED = "COMPLETED"


class RestoreTest(Base):
    """One restore test: a resource's recovery point restored into a scratch target, validated, removed."""

    __tablename__ = "restore_tests"
    # One test per plan run, selection and resource: the runner's idempotency.
    __table_args__ = (
        UniqueConstraint(
            "plan_id", "selection_name", "resource_arn", "scheduled_time", name="uq_restore_tests_run"
        ),
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(ID), index=True)
    plan_name: Mapped[str] = mapped_column(String(PLAN_NAME), index=True)
    plan_arn: Mapped[str] = mapped_column(Text)
    selection_name: Mapped[str] = mapped_column(String(PLAN_NAME))
    scheduled_time: Mapped[datetime]
    resource_arn: Mapped[str] = mapped_column(Text)
    resource_type: Mapped[str] = mapped_column(String(STATE))
    recovery_point_arn: Mapped[str | None] = mapped_column(Text)
    vault_name: Mapped[str | None] = mapped_column(String(VAULT_NAME))
    restore_job_id: Mapped[str | None] = mapped_column(String(ID), index=True)
    # RESTORING, VALIDATING, AWAITING_RESULT, CLEANING or COMPLETED (restore_testing_runs.TestState).
    state: Mapped[str] = mapped_column(String(STATE), index=True)
    endpoint_name: Mapped[str | None] = mapped_column(String(NAME))
    # The scratch target the test chose, and whether deleting it by that name is safe after a failure.
    scratch_name: Mapped[str | None] = mapped_column(Text)
    scratch_owned: Mapped[bool] = mapped_column(default=False)
    validation_window_hours: Mapped[int] = mapped_column(Integer, default=0)
    validation_hook: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    validation_status: Mapped[str | None] = mapped_column(String(STATE))
    validation_message: Mapped[str | None] = mapped_column(Text)
    # What PutRestoreValidationResult reported, kept apart until the runner settles the verdict.
    reported_status: Mapped[str | None] = mapped_column(String(STATE))
    reported_message: Mapped[str | None] = mapped_column(Text)
    validation_deadline: Mapped[datetime | None]
    deletion_status: Mapped[str | None] = mapped_column(String(STATE))
    deletion_message: Mapped[str | None] = mapped_column(Text)
    cleanup_attempts: Mapped[int] = mapped_column(Integer, default=0)
    restore_seconds: Mapped[float | None] = mapped_column(Float)
    claim_owner: Mapped[str | None] = mapped_column(String(255))
    claim_expires_at: Mapped[datetime | None]
    creation_time: Mapped[datetime]
    completion_time: Mapped[datetime | None]
