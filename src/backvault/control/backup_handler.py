"""The BACKUP job handler: a worker runs a backup job's connector into its vault and records the point.

``run_backup_job`` prepares the target (the vault's repository, the resource's endpoint, the point ARN
chosen at StartBackupJob), adopts a snapshot an earlier, interrupted attempt already committed,
otherwise streams a new one, verifies it, and only then records the recovery point, fenced by the
job's lease, so a killed or stopped attempt never leaves a point behind. Copy actions become child
copy jobs. The API side of backup jobs is ``backup_jobs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from backvault.control.catalog.activity import Job, JobType, RecoveryPoint
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.endpoints import endpoint_spec
from backvault.control.job_engine import (
    JobResult,
    JobRun,
    JobState,
    JobStopped,
    PermanentJobError,
)
from backvault.control.job_handlers import (
    classified,
    close_repository,
    load_snapshot,
    new_point_id,
    point_tag,
    verify_snapshot,
)
from backvault.control.vaults import get_vault_row, open_vault_repository, vault_lock
from backvault.domain.arn import (
    BackupArnKind,
    parse_backup_arn,
    recovery_point_arn,
)
from backvault.domain.errors import (
    BackupServiceError,
    InvalidRequestException,
    ResourceNotFoundException,
)
from backvault.domain.lifecycle import Lifecycle, StorageClass, calculate_lifecycle, lifecycle_from_request
from backvault.domain.vault import check_retention_for_new_point
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import BackupRequest, get_connector

POINT_COMPLETED = "COMPLETED"
POINT_PARTIAL = "PARTIAL"


@dataclass(frozen=True)
class _Target:
    """What a backup job works on, resolved from the catalog at the start of an attempt."""

    resource_arn: str
    resource_type: str
    resource_name: str
    endpoint_name: str
    vault_name: str
    point_arn: str
    point_id: str
    lifecycle: Lifecycle | None
    recorded_snapshot_id: str | None  # an earlier attempt already recorded the point


def run_backup_job(run: JobRun) -> JobResult:
    """Back the job's resource up into its vault, record the point, verify it, and queue its copies."""
    context = run.context
    job = run.job()
    parameters = dict(job.parameters or {})
    with classified(f"Preparing the backup of {job.resource_arn}"):
        target = _prepare(context, job, parameters)
        spec = endpoint_spec(context, target.endpoint_name)
        connector = get_connector(target.resource_type)
    if job.recovery_point_arn != target.point_arn:
        run.update(recovery_point_arn=target.point_arn)
    repository: Repository | None = None
    try:
        with classified(f"Opening backup vault {target.vault_name!r}"):
            repository = open_vault_repository(context, target.vault_name)
        with run.step("backup"):
            snapshot = _earlier_snapshot(repository, target, run.attempt)
            if snapshot is None:
                tags = [f"{key}={value}" for key, value in sorted(_tags(parameters).items())]
                request = BackupRequest(
                    spec,
                    target.resource_name,
                    repository,
                    tags=[*tags, point_tag(target.point_id)],
                    options=dict(parameters.get("BackupOptions") or {}),
                    heartbeat=lambda processed: run.heartbeat(processed),
                )
                with classified(f"Backup of {target.resource_arn}"):
                    snapshot = connector.backup(request)
            if target.recorded_snapshot_id is None:
                _record_point(run, target, snapshot, parameters)
        with run.step("verify"), classified("Verifying the new recovery point"):
            problems = verify_snapshot(repository, snapshot)
            if problems:
                summary = "; ".join(problems[:5])
                _mark_point(context, target.point_arn, f"Verification failed: {summary}")
                raise PermanentJobError(f"The new recovery point failed verification: {summary}")
    finally:
        close_repository(repository)
    with run.step("copy"):
        copies, copy_problems = _queue_copies(context, job, target.point_arn, parameters)
    with run.step("lifecycle"):
        pass  # the point carries its CalculatedLifecycle; the lifecycle engine acts on its dates
    with run.step("notify"):
        pass  # the engine records BACKUP_JOB_COMPLETED; notification sinks follow the events
    notes = [_partial_message(snapshot) or "", f"Started {copies} copy job(s)." if copies else ""]
    notes += [f"{problem[0].upper()}{problem[1:]}." for problem in copy_problems]
    message = " ".join(note for note in notes if note)
    return JobResult(JobState.PARTIAL if snapshot.partial else JobState.COMPLETED, message or None)


def _prepare(context: ServiceContext, job: Job, parameters: dict[str, Any]) -> _Target:
    if not job.resource_arn or not job.vault_name:
        raise PermanentJobError("The backup job names no resource or no vault.")
    lifecycle = lifecycle_from_request(parameters.get("Lifecycle"))
    with context.catalog.transaction() as session:
        resource = session.get(ProtectedResource, job.resource_arn)
        if resource is None:
            raise ResourceNotFoundException(f"Resource {job.resource_arn} is no longer known to backvault.")
        if resource.endpoint_name is None:
            raise InvalidRequestException(
                f"The source endpoint of {job.resource_arn} was deleted; register it again to back it up."
            )
        vault = get_vault_row(session, job.vault_name)
        point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.backup_job_id == job.id)).first()
        if point is None:
            check_retention_for_new_point(vault_lock(vault), lifecycle)
        point_arn = job.recovery_point_arn or recovery_point_arn(
            context.arn_context(vault.location_name), new_point_id()
        )
        return _Target(
            resource_arn=resource.arn,
            resource_type=resource.resource_type,
            resource_name=resource.resource_name,
            endpoint_name=resource.endpoint_name,
            vault_name=vault.name,
            point_arn=point_arn,
            point_id=parse_backup_arn(point_arn, BackupArnKind.RECOVERY_POINT).identifier,
            lifecycle=lifecycle,
            recorded_snapshot_id=point.snapshot_id if point is not None else None,
        )


def _earlier_snapshot(repository: Repository, target: _Target, attempt: int) -> Snapshot | None:
    """The snapshot an earlier attempt of this job committed (recorded or not), if there is one."""
    if target.recorded_snapshot_id is not None:
        with classified("Reading the recorded snapshot"):
            return load_snapshot(repository, target.recorded_snapshot_id)
    if attempt <= 1:
        return None  # nobody before us: no need to read every snapshot object
    tag = point_tag(target.point_id)
    with classified("Looking for an earlier attempt's snapshot"):
        return next((snapshot for snapshot in repository.list_snapshots() if tag in snapshot.tags), None)


def _record_point(run: JobRun, target: _Target, snapshot: Snapshot, parameters: dict[str, Any]) -> None:
    """Create the recovery point and update the resource, only while this attempt holds the job."""
    context = run.context
    summary = snapshot.summary
    size = int(summary.get("total_bytes", summary.get("bytes_read", 0)))
    with context.catalog.transaction() as session:
        job = session.scalars(select(Job).where(Job.id == run.job_id).with_for_update()).first()
        if job is None or job.lease_owner != run.worker_id or job.attempts != run.attempt:
            raise JobStopped(f"Job {run.job_id} was taken over; this attempt does not record its point.")
        vault = get_vault_row(session, target.vault_name, for_update=True)
        now = context.now()
        created = job.started_date or now
        calculated = calculate_lifecycle(created, target.lifecycle)
        session.add(
            RecoveryPoint(
                id=target.point_id,
                arn=target.point_arn,
                vault_name=vault.name,
                resource_arn=target.resource_arn,
                resource_type=target.resource_type,
                status=POINT_COMPLETED,
                status_message=_partial_message(snapshot),
                creation_date=created,
                completion_date=now,
                backup_job_id=job.id,
                plan_id=job.plan_id,
                plan_version_id=job.plan_version_id,
                rule_id=job.rule_id,
                lifecycle=None if target.lifecycle is None else target.lifecycle.to_aws(),
                move_to_cold_storage_at=calculated.move_to_cold_storage_at,
                delete_at=calculated.delete_at,
                storage_class=StorageClass.WARM.value,
                snapshot_id=snapshot.id,
                backup_size_in_bytes=size,
                tags=_tags(parameters),
            )
        )
        resource = session.get(ProtectedResource, target.resource_arn)
        if resource is not None:
            resource.last_backup_time = created
            resource.last_backup_vault_arn = vault.arn
            resource.last_recovery_point_arn = target.point_arn
        job.backup_size_in_bytes = size
        # AWS: the bytes transferred to the vault, i.e. newly stored after dedup and compression.
        job.bytes_transferred = int(summary.get("bytes_stored", 0))
    run.report_bytes(job.bytes_transferred)  # later step writes must not put the progress figure back


def _mark_point(context: ServiceContext, point_arn: str, message: str) -> None:
    with context.catalog.transaction() as session:
        point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == point_arn)).first()
        if point is not None:
            point.status = POINT_PARTIAL
            point.status_message = message


def _queue_copies(
    context: ServiceContext, job: Job, point_arn: str, parameters: dict[str, Any]
) -> tuple[int, list[str]]:
    """Start one copy job per CopyAction of the rule (once, however often this step runs).

    A copy that cannot start (its vault was deleted...) is reported, not fatal: the backup itself
    succeeded, as in AWS, where copy jobs succeed or fail on their own.
    """
    actions = [dict(action) for action in parameters.get("CopyActions") or []]
    if not actions:
        return 0, []
    from backvault.control.copy_jobs import create_copy_job  # copy_jobs imports this module's callers

    created, problems = 0, []
    for index, action in enumerate(actions):
        destination = str(action.get("DestinationBackupVaultArn"))
        try:
            with context.catalog.transaction() as session:
                earlier = session.scalars(
                    select(Job.id).where(
                        Job.parent_job_id == job.id,
                        Job.job_type == JobType.COPY.value,
                        Job.destination_vault_arn == destination,
                    )
                ).first()
                if earlier is not None:
                    continue
                create_copy_job(
                    session,
                    context,
                    source_recovery_point_arn=point_arn,
                    destination_backup_vault_arn=destination,
                    lifecycle=action.get("Lifecycle"),
                    parent_job_id=job.id,
                    iam_role_arn=parameters.get("IamRoleArn"),
                    idempotency_token=f"{job.id}/copy/{index}",
                )
                created += 1
        except BackupServiceError as error:
            problems.append(f"copy to {destination} not started: {error.message}")
    return created, problems


def _tags(parameters: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in (parameters.get("RecoveryPointTags") or {}).items()}


def _partial_message(snapshot: Snapshot) -> str | None:
    if not snapshot.partial:
        return None
    errors = snapshot.errors
    example = f", e.g. {errors[0].get('path')}: {errors[0].get('error')}" if errors else ""
    return f"Partial backup: {len(errors)} item(s) could not be read{example}."
