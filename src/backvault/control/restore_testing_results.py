"""PutRestoreValidationResult, and the history of restore tests for the dashboard and the CLI.

A validation result is accepted for a restore test's job once the restore has completed and until
the test's verdict is settled (see ``restore_testing_checks``); the runner then keeps the worse of
the reported result and the hook's own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from backvault.control.catalog.activity import JobType
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.job_engine import JobState, get_job
from backvault.control.restore_testing_checks import TestState, set_job_fields
from backvault.control.restore_testing_hooks import SUCCESSFUL
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)

VALIDATION_STATUSES = ("FAILED", "SUCCESSFUL", "TIMED_OUT", "VALIDATING")
_DONE_JOB_STATES = (JobState.COMPLETED.value, JobState.PARTIAL.value)


# --- PutRestoreValidationResult and the test history ----------------------------------------------


def put_restore_validation_result(
    context: ServiceContext,
    restore_job_id: str,
    validation_status: str,
    validation_status_message: str | None = None,
) -> dict[str, Any]:
    """Record an external validation result for a restore test's job (PutRestoreValidationResult)."""
    job_id = expect_str(restore_job_id, "RestoreJobId")
    status = expect_str(validation_status, "ValidationStatus")
    if status not in VALIDATION_STATUSES:
        raise InvalidParameterValueException(
            f"ValidationStatus {status!r} is not valid; use one of {', '.join(VALIDATION_STATUSES)}."
        )
    message = (
        None
        if validation_status_message is None
        else expect_str(validation_status_message, "ValidationStatusMessage")
    )
    with context.catalog.transaction() as session:
        job = get_job(session, job_id, for_update=True)
        if job.job_type != JobType.RESTORE.value:
            raise ResourceNotFoundException(
                f"No restore job with id {job_id!r} (it is a {job.job_type} job)."
            )
        test = session.scalars(
            select(RestoreTest).where(RestoreTest.restore_job_id == job.id).with_for_update()
        ).first()
        if test is None:
            raise InvalidRequestException(
                f"Restore job {job.id} was not started by a restore testing plan; validation results "
                "apply to restore tests only."
            )
        if job.state not in _DONE_JOB_STATES:
            raise InvalidRequestException(
                f"Restore job {job.id} is {job.state}; a validation result can be put once it has completed."
            )
        if test.state in (TestState.CLEANING.value, TestState.COMPLETED.value):
            raise InvalidRequestException(
                f"The restore test of job {job.id} already ended with ValidationStatus "
                f"{test.validation_status or 'none'}; its scratch copy is deleted or being deleted."
            )
        test.reported_status, test.reported_message = status, message
        set_job_fields(job, ValidationStatus=status, ValidationStatusMessage=message)
    return {}


def list_restore_tests(
    context: ServiceContext, *, restore_testing_plan_name: str | None = None, max_results: int = 100
) -> list[dict[str, Any]]:
    """The latest restore tests, newest first (for the dashboard and the CLI)."""
    statement = (
        select(RestoreTest).order_by(RestoreTest.creation_time.desc(), RestoreTest.id).limit(max_results)
    )
    if restore_testing_plan_name is not None:
        statement = statement.where(RestoreTest.plan_name == restore_testing_plan_name)
    with context.catalog.transaction() as session:
        return [_test_to_dict(row) for row in session.scalars(statement)]


def describe_restore_test(context: ServiceContext, restore_test_id: str) -> dict[str, Any]:
    """One restore test as a dict (see list_restore_tests)."""
    with context.catalog.transaction() as session:
        row = session.get(RestoreTest, expect_str(restore_test_id, "RestoreTestId"))
        if row is None:
            raise ResourceNotFoundException(f"No restore test with id {restore_test_id!r}.")
        return _test_to_dict(row)


def _test_to_dict(row: RestoreTest) -> dict[str, Any]:
    if row.state != TestState.COMPLETED.value:
        status = "RUNNING"
    elif row.validation_status == SUCCESSFUL and row.deletion_status == "SUCCESSFUL":
        status = "SUCCEEDED"
    else:
        status = "FAILED"
    body: dict[str, Any] = {
        "RestoreTestId": row.id,
        "Status": status,
        "State": row.state,
        "RestoreTestingPlanName": row.plan_name,
        "RestoreTestingPlanArn": row.plan_arn,
        "RestoreTestingSelectionName": row.selection_name,
        "ScheduledTime": row.scheduled_time,
        "CreationTime": row.creation_time,
        "ResourceArn": row.resource_arn,
        "ResourceType": row.resource_type,
    }
    optional = {
        "RecoveryPointArn": row.recovery_point_arn,
        "RestoreJobId": row.restore_job_id,
        "ValidationStatus": row.validation_status,
        "ValidationStatusMessage": row.validation_message,
        "DeletionStatus": row.deletion_status,
        "DeletionStatusMessage": row.deletion_message,
        "RestoreDurationSeconds": row.restore_seconds,
        "CompletionTime": row.completion_time,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body
