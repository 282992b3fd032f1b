"""The restore testing runner: starts the tests of due plans; ``restore_testing_checks`` finishes them.

Modules: ``restore_testing`` (plans and selections), ``restore_testing_documents`` (their checks),
this one (starting tests), ``restore_testing_scratch`` (where they restore),
``restore_testing_checks`` (validating and cleaning up),
``restore_testing_hooks`` (user hooks) and ``restore_testing_results`` (PutRestoreValidationResult
and the test history).

``run_restore_tests(context)`` is what the scheduler's leader calls every tick: it starts the tests of
every plan whose schedule came due, then moves running tests on (``advance_restore_tests``).
``run_restore_test_now`` starts a plan's tests at once, off schedule.

A plan run handles, for each selection, every protected resource of the selection's type that
matches its ARNs or tag conditions and has a recovery point inside the plan's window
(SelectionWindowDays, IncludeVaults minus ExcludeVaults): the latest point, or a random one. Each
becomes a restore job (run by the workers) into a *scratch target*: the connector's restore
defaults with the name replaced by one the test owns (a ``bvtest-`` database, bucket or table, or a
directory under the data directory's ``restore-tests``), then the selection's
RestoreMetadataOverrides. The job's parameters carry RestoreTestingPlanName/-Arn, so restore job
listings and metrics tell tests apart.

Idempotency: a plan's ``evaluated_until`` mark moves, in the transaction that creates the run's tests
and jobs, past the scheduled time it handled; a unique key on (plan, selection, resource, scheduled
time) backs that up. Only the latest due run is started; older missed ones are skipped, and so is a
run whose start window (StartWindowHours) has passed.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import JobType, RecoveryPoint
from backvault.control.catalog.models import BackupVault, ProtectedResource
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.catalog.restore_testing_models import RestoreTestingPlan as PlanRow
from backvault.control.catalog.restore_testing_models import RestoreTestingSelection as SelectionRow
from backvault.control.context import ServiceContext
from backvault.control.endpoints import endpoint_spec
from backvault.control.events import record_event
from backvault.control.job_engine import create_job
from backvault.control.job_handlers import close_repository, load_snapshot, open_point_repository
from backvault.control.restore_testing import get_plan_row
from backvault.control.restore_testing_checks import (
    TEST_FAILED_EVENT,
    RestoreTestReport,
    TestState,
    advance_restore_tests,
)
from backvault.control.restore_testing_documents import TAG_CONDITION_PREFIX
from backvault.control.restore_testing_results import put_restore_validation_result
from backvault.control.restore_testing_scratch import scratch_target
from backvault.domain.arn import parse_resource_arn
from backvault.domain.errors import (
    BackupServiceError,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.schedule import parse_schedule
from backvault.domain.selection import wildcard_match
from backvault.repo.errors import RepositoryError
from backvault.sources.base import ConnectorError, get_connector
from backvault.storage.base import StorageError

__all__ = [
    "RestoreTestReport",
    "advance_restore_tests",
    "choose_recovery_point",
    "get_restore_testing_inferred_metadata",
    "put_restore_validation_result",
    "run_restore_test_now",
    "run_restore_tests",
    "run_restore_tests_forever",
]

logger = logging.getLogger(__name__)

RESTORABLE_STATES = ("COMPLETED", "PARTIAL", "AVAILABLE")
MAX_RESOURCES_PER_SELECTION = 100
_random = random.SystemRandom()


@dataclass(frozen=True)
class Candidate:
    """One resource of a selection and the recovery point chosen to test it."""

    selection_name: str
    resource_arn: str
    resource_type: str
    resource_name: str
    endpoint_name: str | None
    point_arn: str
    vault_name: str
    snapshot_id: str


@dataclass
class Prepared:
    """A candidate with its restore metadata, or the reason it cannot be tested."""

    candidate: Candidate
    test_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    scratch_name: str | None = None
    scratch_owned: bool = False
    error: str | None = None


# --- entry points ---------------------------------------------------------------------------------


def run_restore_tests(context: ServiceContext, *, runner_id: str | None = None) -> RestoreTestReport:
    """Start the tests of every plan whose schedule came due, then move running tests on."""
    report = RestoreTestReport()
    now = context.now()
    with context.catalog.transaction() as session:
        plans = [
            (row.name, _due_run(row, now)) for row in session.scalars(select(PlanRow).order_by(PlanRow.name))
        ]
    for name, scheduled in plans:
        if scheduled is None:
            continue
        try:
            _start_run(context, name, scheduled, report, scheduled_run=True)
        except Exception as error:  # one broken plan must not stop the others
            logger.exception("restore testing plan %s could not start its run", name)
            report.errors.append(f"plan {name}: {error}")
    advance_restore_tests(context, report=report, runner_id=runner_id)
    return report


def run_restore_tests_forever(
    context: ServiceContext, stop: threading.Event, interval_seconds: float = 30.0
) -> None:
    """Call run_restore_tests every ``interval_seconds`` until ``stop`` is set (a server thread).

    Validations and hooks can take long, so the server runs this in its own thread rather than in
    the scheduler's tick. Several of these loops may run at once, on any number of servers: plan
    runs are started once (row lock and schedule mark) and tests are claimed one runner at a time.
    """
    runner_id = f"restore-tests-{uuid.uuid4().hex[:12]}"
    while not stop.is_set():
        try:
            run_restore_tests(context, runner_id=runner_id)
        except Exception:  # the loop must survive a bad round (database blip, a broken connector)
            logger.exception("restore testing round failed; retrying in %s s", interval_seconds)
        stop.wait(interval_seconds)


def run_restore_test_now(context: ServiceContext, restore_testing_plan_name: str) -> RestoreTestReport:
    """Start a plan's tests now, off schedule (its scheduled runs are not affected)."""
    report = RestoreTestReport()
    with context.catalog.transaction() as session:
        name = get_plan_row(session, restore_testing_plan_name).name
    _start_run(context, name, context.now(), report, scheduled_run=False)
    return report


def get_restore_testing_inferred_metadata(
    context: ServiceContext,
    backup_vault_name: str,
    recovery_point_arn: str,
    *,
    backup_vault_account_id: str | None = None,
) -> dict[str, Any]:
    """Return the restore metadata a restore test of this point would use (with an example scratch name)."""
    if backup_vault_account_id is not None and backup_vault_account_id != context.account:
        raise ResourceNotFoundException(
            f"No recovery point {recovery_point_arn} in account {backup_vault_account_id}."
        )
    with context.catalog.transaction() as session:
        point = session.scalars(
            select(RecoveryPoint).where(
                RecoveryPoint.arn == expect_str(recovery_point_arn, "RecoveryPointArn")
            )
        ).first()
        if point is None or point.vault_name != expect_str(backup_vault_name, "BackupVaultName"):
            raise ResourceNotFoundException(
                f"Backup vault {backup_vault_name!r} holds no recovery point {recovery_point_arn}."
            )
        resource = session.get(ProtectedResource, point.resource_arn)
        candidate = Candidate(
            selection_name="",
            resource_arn=point.resource_arn,
            resource_type=point.resource_type,
            resource_name=_resource_name(resource, point.resource_arn),
            endpoint_name=_endpoint_of(resource, point.resource_arn),
            point_arn=point.arn,
            vault_name=point.vault_name,
            snapshot_id=point.snapshot_id or "",
        )
    prepared = _prepare(context, candidate, {})
    if prepared.error is not None:
        raise InvalidRequestException(prepared.error)
    return {"InferredMetadata": prepared.metadata}


def choose_recovery_point(
    points: list[tuple[datetime, str]], algorithm: str, chooser: random.Random | None = None
) -> str | None:
    """Pick from (creation date, ARN) pairs: the latest, or one at random; None when there are none."""
    if not points:
        return None
    if algorithm == "RANDOM_WITHIN_WINDOW":
        return (chooser or _random).choice(sorted(points))[1]
    return max(points)[1]


# --- one run of a plan ----------------------------------------------------------------------------


def _due_run(row: PlanRow, now: datetime) -> datetime | None:
    """The latest scheduled time in (evaluated_until, now], or None when nothing is due."""
    schedule = parse_schedule(row.schedule_expression)
    latest = schedule.previous_at_or_before(now, row.schedule_timezone, anchor=row.schedule_anchor)
    if latest is None or latest <= row.evaluated_until:
        return None
    return latest


def _start_run(
    context: ServiceContext,
    plan_name: str,
    scheduled: datetime,
    report: RestoreTestReport,
    *,
    scheduled_run: bool,
) -> None:
    """Pick the run's resources and points, prepare their restores, then create tests and jobs at once."""
    now = context.now()
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, plan_name)
        window_end = scheduled + timedelta(hours=plan.start_window_hours)
        if scheduled_run and window_end <= now:
            candidates: list[tuple[Candidate, SelectionRow]] = []
            skipped_reason: str | None = "its start window had passed"
        else:
            candidates = _candidates(session, context, plan, report)
            skipped_reason = None
        overrides = {row.name: dict(row.restore_metadata_overrides) for _, row in candidates}
    # Outside any transaction: opening repositories and asking connectors takes a while.
    prepared = [
        _prepare(context, candidate, overrides[candidate.selection_name]) for candidate, _ in candidates
    ]
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, plan_name, for_update=True)
        if scheduled_run:
            if plan.evaluated_until >= scheduled:
                return  # another runner handled this run meanwhile
            plan.evaluated_until = now
        if skipped_reason is not None:
            report.skipped.append(
                {"RestoreTestingPlanName": plan.name, "ScheduledTime": scheduled, "Reason": skipped_reason}
            )
            return
        plan.last_execution_time = now
        selections = {
            row.name: row
            for row in session.scalars(select(SelectionRow).where(SelectionRow.plan_name == plan.name))
        }
        for item in prepared:
            selection = selections.get(item.candidate.selection_name)
            if selection is None:
                continue  # deleted while the run was being prepared
            _create_test(session, context, plan, selection, item, scheduled, report)


def _candidates(
    session: Session, context: ServiceContext, plan: PlanRow, report: RestoreTestReport
) -> list[tuple[Candidate, SelectionRow]]:
    """Every (resource, chosen point) of every selection of the plan."""
    choice = plan.recovery_point_selection
    if "SNAPSHOT" not in choice["RecoveryPointTypes"]:
        report.skipped.append(
            {"RestoreTestingPlanName": plan.name, "Reason": "backvault keeps SNAPSHOT recovery points only"}
        )
        return []
    since = context.now() - timedelta(days=int(choice["SelectionWindowDays"]))
    found: list[tuple[Candidate, SelectionRow]] = []
    selections = session.scalars(
        select(SelectionRow).where(SelectionRow.plan_name == plan.name).order_by(SelectionRow.name)
    )
    for selection in selections:
        rows = session.execute(
            select(RecoveryPoint, BackupVault.arn)
            .join(BackupVault, BackupVault.name == RecoveryPoint.vault_name)
            .where(
                RecoveryPoint.resource_type == selection.protected_resource_type,
                RecoveryPoint.status.in_(RESTORABLE_STATES),
                RecoveryPoint.storage_class != "DELETED",
                RecoveryPoint.snapshot_id.is_not(None),
                RecoveryPoint.creation_date >= since,
            )
        ).all()
        by_resource: dict[str, list[RecoveryPoint]] = {}
        for point, vault_arn in rows:
            if _vault_allowed(vault_arn, choice):
                by_resource.setdefault(point.resource_arn, []).append(point)
        chosen = 0
        for resource_arn in sorted(by_resource):
            resource = session.get(ProtectedResource, resource_arn)
            if not _resource_selected(
                selection, resource_arn, dict(resource.native_tags) if resource else {}
            ):
                continue
            if chosen >= MAX_RESOURCES_PER_SELECTION:
                report.skipped.append(
                    {
                        "RestoreTestingPlanName": plan.name,
                        "RestoreTestingSelectionName": selection.name,
                        "ResourceArn": resource_arn,
                        "Reason": f"more than {MAX_RESOURCES_PER_SELECTION} resources",
                    }
                )
                continue
            points = {point.arn: point for point in by_resource[resource_arn]}
            arn = choose_recovery_point(
                [(p.creation_date, p.arn) for p in points.values()], choice["Algorithm"]
            )
            point = points[arn or ""]
            chosen += 1
            found.append(
                (
                    Candidate(
                        selection_name=selection.name,
                        resource_arn=resource_arn,
                        resource_type=point.resource_type,
                        resource_name=_resource_name(resource, resource_arn),
                        endpoint_name=_endpoint_of(resource, resource_arn),
                        point_arn=point.arn,
                        vault_name=point.vault_name,
                        snapshot_id=point.snapshot_id or "",
                    ),
                    selection,
                )
            )
    return found


def _vault_allowed(vault_arn: str, choice: dict[str, Any]) -> bool:
    included = any(wildcard_match(pattern, vault_arn) for pattern in choice["IncludeVaults"])
    return included and not any(
        wildcard_match(pattern, vault_arn) for pattern in choice.get("ExcludeVaults") or []
    )


def _resource_selected(selection: SelectionRow, resource_arn: str, tags: dict[str, str]) -> bool:
    arns = list(selection.protected_resource_arns or [])
    if arns and arns != ["*"] and resource_arn not in arns:
        return False
    conditions = selection.protected_resource_conditions or {}
    for entry in conditions.get("StringEquals") or []:
        if tags.get(entry["Key"].removeprefix(TAG_CONDITION_PREFIX)) != entry["Value"]:
            return False
    for entry in conditions.get("StringNotEquals") or []:
        if tags.get(entry["Key"].removeprefix(TAG_CONDITION_PREFIX)) == entry["Value"]:
            return False
    return True


def _prepare(context: ServiceContext, candidate: Candidate, overrides: dict[str, str]) -> Prepared:
    """Ask the connector for its restore defaults and turn them into a scratch target."""
    prepared = Prepared(candidate, str(uuid.uuid4()))
    endpoint_name = next((value for key, value in overrides.items() if key.lower() == "endpointname"), None)
    endpoint_name = endpoint_name or candidate.endpoint_name
    if endpoint_name is None:
        prepared.error = (
            f"The endpoint that held {candidate.resource_arn} is no longer registered; set "
            "RestoreMetadataOverrides EndpointName to choose where to restore."
        )
        return prepared
    repository = None
    try:
        spec = endpoint_spec(context, endpoint_name)
        if spec.endpoint_type != candidate.resource_type:
            raise ConnectorError(
                f"source endpoint {spec.name!r} holds {spec.endpoint_type} resources, not "
                f"{candidate.resource_type}"
            )
        repository, snapshot_id = open_point_repository(
            context, candidate.point_arn, candidate.vault_name, candidate.snapshot_id
        )
        snapshot = load_snapshot(repository, snapshot_id)
        defaults = get_connector(candidate.resource_type).restore_metadata(
            spec, candidate.resource_name, snapshot
        )
    except (BackupServiceError, ConnectorError, RepositoryError, StorageError, OSError) as error:
        shown = error.message if isinstance(error, BackupServiceError) else str(error)
        prepared.error = f"The restore of {candidate.point_arn} could not be prepared: {shown}"
        return prepared
    finally:
        close_repository(repository)
    short = prepared.test_id.replace("-", "")[:12]
    metadata, prepared.scratch_name, prepared.scratch_owned = scratch_target(context, spec, defaults, short)
    for key, value in overrides.items():
        if key.lower() == "endpointname":
            continue
        existing = next((known for known in metadata if known.lower() == key.lower()), key)
        metadata[existing] = value
    metadata["EndpointName"] = spec.name
    prepared.metadata = metadata
    return prepared


def _create_test(
    session: Session,
    context: ServiceContext,
    plan: PlanRow,
    selection: SelectionRow,
    item: Prepared,
    scheduled: datetime,
    report: RestoreTestReport,
) -> None:
    """Insert one test row (and its restore job), unless this run already has it."""
    candidate = item.candidate
    taken = session.scalars(
        select(RestoreTest.id).where(
            RestoreTest.plan_id == plan.id,
            RestoreTest.selection_name == selection.name,
            RestoreTest.resource_arn == candidate.resource_arn,
            RestoreTest.scheduled_time == scheduled,
        )
    ).first()
    if taken is not None:
        return
    now = context.now()
    test = RestoreTest(
        id=item.test_id,
        plan_id=plan.id,
        plan_name=plan.name,
        plan_arn=plan.arn,
        selection_name=selection.name,
        scheduled_time=scheduled,
        resource_arn=candidate.resource_arn,
        resource_type=candidate.resource_type,
        recovery_point_arn=candidate.point_arn,
        vault_name=candidate.vault_name,
        state=TestState.RESTORING.value,
        endpoint_name=item.metadata.get("EndpointName") or candidate.endpoint_name,
        scratch_name=item.scratch_name,
        scratch_owned=item.scratch_owned,
        validation_window_hours=selection.validation_window_hours,
        validation_hook=selection.validation_hook or plan.validation_hook,
        cleanup_attempts=0,
        creation_time=now,
    )
    session.add(test)
    if item.error is not None:
        test.state = TestState.COMPLETED.value
        test.validation_message = item.error
        test.deletion_status = "SUCCESSFUL"
        test.deletion_message = "Nothing was restored, so there was nothing to delete."
        test.completion_time = now
        session.flush()
        record_event(
            session,
            TEST_FAILED_EVENT,
            now,
            resource_arn=candidate.resource_arn,
            vault_name=candidate.vault_name,
            detail={
                "RestoreTestId": test.id,
                "RestoreTestingPlanName": plan.name,
                "RestoreTestingSelectionName": selection.name,
                "Message": item.error,
            },
        )
        report.finished.append(test.id)
        return
    job = create_job(
        session,
        context,
        JobType.RESTORE,
        resource_arn=candidate.resource_arn,
        resource_type=candidate.resource_type,
        vault_name=candidate.vault_name,
        recovery_point_arn=candidate.point_arn,
        parameters={
            "Metadata": item.metadata,
            "IamRoleArn": selection.iam_role_arn,
            "RestoreTestingPlanArn": plan.arn,
            "RestoreTestingPlanName": plan.name,
            "RestoreTestingSelectionName": selection.name,
            "RestoreTestId": test.id,
        },
        start_by=scheduled + timedelta(hours=plan.start_window_hours),
    )
    test.restore_job_id = job.id
    session.flush()
    report.started.append(test.id)
    report.restore_job_ids.append(job.id)


def _resource_name(resource: ProtectedResource | None, resource_arn: str) -> str:
    return resource.resource_name if resource is not None else parse_resource_arn(resource_arn).name


def _endpoint_of(resource: ProtectedResource | None, resource_arn: str) -> str | None:
    if resource is not None and resource.endpoint_name:
        return resource.endpoint_name
    return parse_resource_arn(resource_arn).endpoint
