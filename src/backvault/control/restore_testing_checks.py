"""Finishing restore tests: validate the restored copy, settle the verdict, always delete the copy.

``advance_restore_tests`` moves every running test one step further:

* RESTORING -> once its restore job ended: a failed restore goes straight to clean-up; a completed
  one is validated by the connector (``validate``: the copy against the manifest saved at backup
  time) and then by the user's hook, if any (``restore_testing_hooks``).
* VALIDATING -> a runner holds a claim on the test while it validates (renewed while it works); a
  claim left by a dead runner expires and the test is validated again.
* AWAITING_RESULT -> the copy stays for the selection's ValidationWindowHours so that an external
  check can call PutRestoreValidationResult; the first final result, or the end of the window,
  settles the verdict (TIMED_OUT if a hook promised a result and gave none).
* CLEANING -> ``delete_restored`` removes the scratch copy (retried a few times), whatever the
  verdict; DeletionStatus and DeletionStatusMessage record how it went.
* COMPLETED, with a RESTORE_TEST_SUCCEEDED or RESTORE_TEST_FAILED event.

The restore job's parameters carry ValidationStatus(-Message) and DeletionStatus(-Message), which is
where DescribeRestoreJob shows them, as AWS does. The restore's duration (job start to completion)
is the job's own, which the audit's RESTORE_TIME control reads; it is also kept on the test.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, RecoveryPoint
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.endpoints import endpoint_spec
from backvault.control.events import record_event
from backvault.control.job_engine import TERMINAL_STATES, JobState, get_job
from backvault.control.job_handlers import close_repository, load_snapshot, open_point_repository
from backvault.control.restore_testing_hooks import FAILED, SUCCESSFUL, TIMED_OUT, run_validation_hook, worse
from backvault.domain.arn import ResourceType
from backvault.domain.errors import (
    BackupServiceError,
)
from backvault.repo.errors import RepositoryError
from backvault.sources.base import ConnectorError, ConnectorStopped, ValidationRequest, get_connector
from backvault.storage.base import StorageError

logger = logging.getLogger(__name__)

TEST_SUCCEEDED_EVENT = "RESTORE_TEST_SUCCEEDED"
TEST_FAILED_EVENT = "RESTORE_TEST_FAILED"
VALIDATING = "VALIDATING"
CLAIM = timedelta(minutes=15)
RENEW_EVERY_SECONDS = 60.0
MAX_CLEANUP_ATTEMPTS = 3
_DONE_JOB_STATES = (JobState.COMPLETED.value, JobState.PARTIAL.value)


class TestState(StrEnum):
    """Where a restore test is."""

    RESTORING = "RESTORING"
    VALIDATING = "VALIDATING"
    AWAITING_RESULT = "AWAITING_RESULT"
    CLEANING = "CLEANING"
    COMPLETED = "COMPLETED"


@dataclass
class RestoreTestReport:
    """What one call of the runner did: tests started and finished, runs skipped, errors."""

    started: list[str] = field(default_factory=list)
    restore_job_ids: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- the runner's second half ---------------------------------------------------------------------


def advance_restore_tests(
    context: ServiceContext, *, report: RestoreTestReport | None = None, runner_id: str | None = None
) -> RestoreTestReport:
    """Validate tests whose restore ended, settle waiting verdicts, and clean up; see the module docstring."""
    report = report if report is not None else RestoreTestReport()
    runner = runner_id or f"restore-tests-{uuid.uuid4().hex[:12]}"
    now = context.now()
    terminal = [state.value for state in TERMINAL_STATES]
    with context.catalog.transaction() as session:
        to_validate = list(
            session.scalars(
                select(RestoreTest.id)
                .join(Job, Job.id == RestoreTest.restore_job_id)
                .where(
                    or_(
                        and_(RestoreTest.state == TestState.RESTORING.value, Job.state.in_(terminal)),
                        and_(
                            RestoreTest.state == TestState.VALIDATING.value,
                            RestoreTest.claim_expires_at < now,
                        ),
                    )
                )
                .order_by(RestoreTest.creation_time, RestoreTest.id)
            )
        )
        waiting = list(
            session.scalars(
                select(RestoreTest.id).where(
                    RestoreTest.state == TestState.AWAITING_RESULT.value,
                    or_(
                        RestoreTest.reported_status.in_((SUCCESSFUL, FAILED, TIMED_OUT)),
                        RestoreTest.validation_deadline <= now,
                    ),
                )
            )
        )
    for test_id in to_validate:
        _guarded(report, test_id, _validate, context, test_id, runner)
    for test_id in waiting:
        _guarded(report, test_id, _settle_waiting, context, test_id)
    with context.catalog.transaction() as session:
        cleaning = list(
            session.scalars(
                select(RestoreTest.id).where(
                    RestoreTest.state == TestState.CLEANING.value,
                    or_(RestoreTest.claim_expires_at.is_(None), RestoreTest.claim_expires_at < now),
                )
            )
        )
    for test_id in cleaning:
        if _guarded(report, test_id, _clean_up, context, test_id, runner):
            report.finished.append(test_id)
    return report


def _guarded(report: RestoreTestReport, test_id: str, action: Any, *args: Any) -> Any:
    try:
        return action(*args)
    except Exception as error:  # one test's trouble must not stop the others
        logger.exception("restore test %s: %s failed", test_id, getattr(action, "__name__", "a step"))
        report.errors.append(f"restore test {test_id}: {error}")
        return None


def _validate(context: ServiceContext, test_id: str, runner: str) -> None:
    """Claim the test, run the built-in validation and the hook, and record the verdict."""
    if not _claim(
        context, test_id, runner, (TestState.RESTORING, TestState.VALIDATING), TestState.VALIDATING
    ):
        return
    try:
        _validate_claimed(context, test_id, runner)
    except ConnectorStopped:
        raise  # another runner holds the test now
    except Exception as error:
        # Whatever went wrong, the copy must not stay: fail the test and go on to the clean-up.
        logger.exception("restore test %s: validation failed unexpectedly", test_id)
        message = f"The validation failed unexpectedly: {type(error).__name__}: {error}"
        _record_verdict(context, test_id, runner, FAILED, message, TestState.CLEANING)


def _validate_claimed(context: ServiceContext, test_id: str, runner: str) -> None:
    with context.catalog.transaction() as session:
        test = session.get(RestoreTest, test_id)
        job = get_job(session, test.restore_job_id or "") if test is not None else None
        if test is None or job is None:
            return
        facts = _facts(test, job)
        state, window = job.state, test.validation_window_hours
        hook = dict(test.validation_hook) if test.validation_hook else None
        test.restore_seconds = _duration(job.started_date, job.completion_date)
        if state in _DONE_JOB_STATES:
            set_job_fields(
                job, ValidationStatus=VALIDATING, ValidationStatusMessage="Validating the restored copy."
            )
        completion = job.completion_date or context.now()
        snapshot_id = session.scalars(
            select(RecoveryPoint.snapshot_id).where(RecoveryPoint.arn == test.recovery_point_arn)
        ).first()
        point = _PointFacts(
            test.recovery_point_arn or "", test.vault_name or "", snapshot_id or "", test.resource_type
        )
        plan_name = test.plan_name
    if state not in _DONE_JOB_STATES:
        message = f"The restore job ended {state}: {facts.get('StatusMessage') or 'no message'}"
        _record_verdict(context, test_id, runner, None, message, TestState.CLEANING)
        return
    keeper = _ClaimKeeper(context, test_id, runner)
    valid, message = _built_in_validation(context, facts, point, keeper)
    facts["BuiltInValidationMessage"] = message
    if not valid:
        _record_verdict(context, test_id, runner, FAILED, message, TestState.CLEANING)
        return
    # Without a hook, the built-in validation is the verdict unless a validation window asks to wait
    # for an external one; a hook's verdict may be deferred (None) to PutRestoreValidationResult.
    verdict: str | None = SUCCESSFUL if hook is None and window == 0 else None
    if hook is not None:
        outcome = run_validation_hook(context, hook, plan_name, facts, keeper.renew)
        verdict, message = outcome.status, f"{message} {outcome.message}"
    with context.catalog.transaction() as session:
        test = session.get(RestoreTest, test_id)
        reported = test.reported_status if test is not None else None
        reported_message = test.reported_message if test is not None else None
    if reported in (SUCCESSFUL, FAILED, TIMED_OUT):
        detail = f": {reported_message}" if reported_message else ""
        shown = f"{message} Reported result: {reported}{detail}."
        _record_verdict(context, test_id, runner, worse(verdict, reported), shown, TestState.CLEANING)
    elif verdict is not None:
        _record_verdict(context, test_id, runner, verdict, message, TestState.CLEANING)
    elif window == 0:
        shown = f"{message} No result came and the selection's ValidationWindowHours is 0, so none can."
        _record_verdict(context, test_id, runner, TIMED_OUT, shown, TestState.CLEANING)
    else:
        deadline = completion + timedelta(hours=window)
        shown = f"{message} Waiting until {deadline:%Y-%m-%d %H:%M} UTC for PutRestoreValidationResult."
        _record_verdict(context, test_id, runner, VALIDATING, shown, TestState.AWAITING_RESULT, deadline)


def _settle_waiting(context: ServiceContext, test_id: str) -> None:
    """Settle a test that waited for an external result: the result, or the end of its window."""
    with context.catalog.transaction() as session:
        test = session.scalars(select(RestoreTest).where(RestoreTest.id == test_id).with_for_update()).first()
        if test is None or test.state != TestState.AWAITING_RESULT.value:
            return
        if test.reported_status in (SUCCESSFUL, FAILED, TIMED_OUT):
            status = test.reported_status
            message = test.reported_message or f"PutRestoreValidationResult reported {status}."
        elif test.validation_hook:
            status, message = TIMED_OUT, "The validation hook gave no result within the validation window."
        else:
            status = SUCCESSFUL
            message = f"{test.validation_message or ''} No external result came within the window.".strip()
        _apply_verdict(session, test, status, message, TestState.CLEANING, None)


def _clean_up(context: ServiceContext, test_id: str, runner: str) -> bool:
    """Delete the scratch copy and finish the test; False when the deletion will be retried."""
    if not _claim(context, test_id, runner, (TestState.CLEANING,), TestState.CLEANING):
        return False
    with context.catalog.transaction() as session:
        test = session.get(RestoreTest, test_id)
        if test is None:
            return False
        job = session.get(Job, test.restore_job_id) if test.restore_job_id else None
        parameters = dict(job.parameters or {}) if job is not None else {}
        target = parameters.get("CreatedResourceName") or (test.scratch_name if test.scratch_owned else None)
        endpoint = (
            parameters.get("Metadata", {}).get("EndpointName")
            or parameters.get("EndpointName")
            or test.endpoint_name
        )
        resource_type = test.resource_type
    status, message = "SUCCESSFUL", "Nothing was restored, so there was nothing to delete."
    if target:
        try:
            spec = endpoint_spec(context, str(endpoint))
            get_connector(resource_type).delete_restored(spec, str(target))
            status, message = (
                "SUCCESSFUL",
                f"Deleted the scratch copy {_shown_target(resource_type, str(target))}.",
            )
        except Exception as error:  # any failure counts as an attempt; the next advance retries
            shown = error.message if isinstance(error, BackupServiceError) else str(error)
            status, message = "FAILED", f"The scratch copy {target} could not be deleted: {shown}"
    now = context.now()
    with context.catalog.transaction() as session:
        test = session.scalars(select(RestoreTest).where(RestoreTest.id == test_id).with_for_update()).first()
        if test is None or test.claim_owner != runner:
            return False
        job = session.get(Job, test.restore_job_id) if test.restore_job_id else None
        test.deletion_status, test.deletion_message = status, message
        test.claim_owner = test.claim_expires_at = None
        if status == "FAILED":
            test.cleanup_attempts += 1
            if test.cleanup_attempts < MAX_CLEANUP_ATTEMPTS:
                if job is not None:
                    set_job_fields(job, DeletionStatus="DELETING", DeletionStatusMessage=message)
                return False  # the next advance tries again
        if job is not None:
            set_job_fields(job, DeletionStatus=status, DeletionStatusMessage=message)
        test.state = TestState.COMPLETED.value
        test.completion_time = now
        passed = test.validation_status == SUCCESSFUL and status == "SUCCESSFUL"
        record_event(
            session,
            TEST_SUCCEEDED_EVENT if passed else TEST_FAILED_EVENT,
            now,
            resource_arn=test.resource_arn,
            vault_name=test.vault_name,
            job_id=test.restore_job_id,
            detail=_event_detail(test),
        )
    return True


# --- helpers --------------------------------------------------------------------------------------


class _ClaimKeeper:
    """Renews a runner's claim on a test while long work runs; raises ConnectorStopped once it is lost."""

    def __init__(self, context: ServiceContext, test_id: str, runner: str) -> None:
        self.context, self.test_id, self.runner = context, test_id, runner
        self.last = time.monotonic()

    def renew(self) -> None:
        """Extend the claim (at most once a minute); stop the work if another runner took the test."""
        if time.monotonic() - self.last < RENEW_EVERY_SECONDS:
            return
        self.last = time.monotonic()
        with self.context.catalog.transaction() as session:
            changed = session.execute(
                update(RestoreTest)
                .where(RestoreTest.id == self.test_id, RestoreTest.claim_owner == self.runner)
                .values(claim_expires_at=self.context.now() + CLAIM)
                .execution_options(synchronize_session=False)
            )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise ConnectorStopped(f"restore test {self.test_id} was taken over by another runner")

    def heartbeat(self, _processed: int) -> None:
        """The connector's heartbeat callback."""
        self.renew()


def _claim(
    context: ServiceContext, test_id: str, runner: str, states: tuple[TestState, ...], new_state: TestState
) -> bool:
    """Take a test for this runner if it is in one of ``states`` and unclaimed (or its claim expired)."""
    now = context.now()
    with context.catalog.transaction() as session:
        changed = session.execute(
            update(RestoreTest)
            .where(
                RestoreTest.id == test_id,
                RestoreTest.state.in_([state.value for state in states]),
                or_(RestoreTest.claim_expires_at.is_(None), RestoreTest.claim_expires_at < now),
            )
            .values(state=new_state.value, claim_owner=runner, claim_expires_at=now + CLAIM)
            .execution_options(synchronize_session=False)
        )
    return bool(changed.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _PointFacts:
    """The recovery point a test restored."""

    arn: str
    vault_name: str
    snapshot_id: str
    resource_type: str


def _built_in_validation(
    context: ServiceContext, facts: dict[str, str], point: _PointFacts, keeper: _ClaimKeeper
) -> tuple[bool, str]:
    """Run the connector's validation of the restored copy; (valid, message)."""
    repository = None
    try:
        spec = endpoint_spec(context, facts["EndpointName"])
        repository, snapshot_id = open_point_repository(
            context, point.arn, point.vault_name, point.snapshot_id
        )
        snapshot = load_snapshot(repository, snapshot_id)
        outcome = get_connector(point.resource_type).validate(
            ValidationRequest(
                spec, facts["CreatedResourceName"], repository, snapshot, heartbeat=keeper.heartbeat
            )
        )
    except ConnectorStopped:
        raise
    except (BackupServiceError, ConnectorError, RepositoryError, StorageError, OSError, KeyError) as error:
        shown = error.message if isinstance(error, BackupServiceError) else str(error)
        return False, f"The built-in validation could not run: {shown}"
    finally:
        close_repository(repository)
    prefix = "Built-in validation passed:" if outcome.valid else "Built-in validation failed:"
    return outcome.valid, f"{prefix} {outcome.message}"


def _record_verdict(
    context: ServiceContext,
    test_id: str,
    runner: str,
    status: str | None,
    message: str,
    next_state: TestState,
    deadline: datetime | None = None,
) -> None:
    with context.catalog.transaction() as session:
        test = session.scalars(select(RestoreTest).where(RestoreTest.id == test_id).with_for_update()).first()
        if test is None or test.claim_owner != runner:
            return  # another runner took the test over; its verdict counts
        _apply_verdict(session, test, status, message, next_state, deadline)


def _apply_verdict(
    session: Session,
    test: RestoreTest,
    status: str | None,
    message: str,
    next_state: TestState,
    deadline: datetime | None,
) -> None:
    test.validation_status, test.validation_message = status, message
    test.validation_deadline = deadline
    test.state = next_state.value
    test.claim_owner = test.claim_expires_at = None
    job = session.get(Job, test.restore_job_id) if test.restore_job_id else None
    if job is None:
        return
    fields: dict[str, Any] = {}
    if status is not None:
        fields.update(ValidationStatus=status, ValidationStatusMessage=message)
    if next_state == TestState.CLEANING:
        fields["DeletionStatus"] = "DELETING"
    set_job_fields(job, **fields)


def set_job_fields(job: Job, **fields: Any) -> None:
    """Set members of a job's parameters (a new document: JSON columns are not mutation-tracked)."""
    parameters = dict(job.parameters or {})
    for key, value in fields.items():
        if value is None:
            parameters.pop(key, None)
        else:
            parameters[key] = value
    job.parameters = parameters


def _facts(test: RestoreTest, job: Job) -> dict[str, str]:
    """What the hook and the validation are told about the restored copy."""
    parameters = job.parameters or {}
    created = str(parameters.get("CreatedResourceName") or "")
    endpoint = str(
        (parameters.get("Metadata") or {}).get("EndpointName")
        or parameters.get("EndpointName")
        or test.endpoint_name
        or ""
    )
    facts = {
        "RestoreJobId": job.id,
        "RestoreTestId": test.id,
        "RestoreTestingPlanName": test.plan_name,
        "RestoreTestingPlanArn": test.plan_arn,
        "RestoreTestingSelectionName": test.selection_name,
        "ResourceType": test.resource_type,
        "SourceResourceArn": test.resource_arn,
        "RecoveryPointArn": test.recovery_point_arn or "",
        "EndpointName": endpoint,
        "CreatedResourceName": created,
        "CreatedResourceArn": str(parameters.get("CreatedResourceArn") or ""),
        "StatusMessage": job.status_message or "",
    }
    if test.resource_type == ResourceType.FILESYSTEM.value and os.path.isabs(created):
        facts["RestoredPath"] = created
    return facts


def _duration(started: datetime | None, completed: datetime | None) -> float | None:
    if started is None or completed is None:
        return None
    return max((completed - started).total_seconds(), 0.0)


def _shown_target(resource_type: str, target: str) -> str:
    return target if resource_type == ResourceType.FILESYSTEM.value else repr(target)


def _event_detail(test: RestoreTest) -> dict[str, Any]:
    return {
        "RestoreTestId": test.id,
        "RestoreTestingPlanName": test.plan_name,
        "RestoreTestingPlanArn": test.plan_arn,
        "RestoreTestingSelectionName": test.selection_name,
        "RecoveryPointArn": test.recovery_point_arn,
        "ValidationStatus": test.validation_status,
        "ValidationStatusMessage": test.validation_message,
        "DeletionStatus": test.deletion_status,
        "DeletionStatusMessage": test.deletion_message,
        "RestoreDurationSeconds": test.restore_seconds,
    }
