"""The handlers workers run, by job type, and the plumbing the job services and handlers share.

Handlers are imported when a job of their type first runs: importing this module stays cheap, and a
missing optional module (copy jobs) fails only the jobs that need it, with a clear message.

Handlers report failures to the engine as ``PermanentJobError`` (fail now: bad input, a connector
that says no) or ``RetryableJobError`` (try again later: storage or catalog trouble); ``job_error``
makes that call for the exceptions the layers below raise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, JobType
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.job_engine import (
    JobHandler,
    JobResult,
    JobRun,
    JobState,
    JobStopped,
    PermanentJobError,
    RetryableJobError,
)
from backvault.control.pagination import decode_token, encode_token, page_size
from backvault.domain.errors import (
    BackupServiceError,
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    ServiceUnavailableException,
)
from backvault.repo.errors import DamagedDataError, RepositoryError, SnapshotNotFoundError
from backvault.repo.repository import Repository, verify_named_object
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import ConnectorError, ConnectorStopped
from backvault.storage.base import ObjectNotFoundError, StorageError


def _run_backup(run: JobRun) -> JobResult:
    from backvault.control.backup_handler import run_backup_job

    return run_backup_job(run)


def _run_restore(run: JobRun) -> JobResult:
    from backvault.control.restore_jobs import run_restore_job

    return run_restore_job(run)


def _run_copy(run: JobRun) -> JobResult:
    from backvault.control.copy_jobs import run_copy_job

    return run_copy_job(run)


HANDLERS: dict[JobType, JobHandler] = {
    JobType.BACKUP: _run_backup,
    JobType.RESTORE: _run_restore,
    JobType.COPY: _run_copy,
}


# --- shared by the handlers ------------------------------------------------------------------------


def job_error(error: BaseException, doing: str) -> BaseException | None:
    """Return the engine exception an error stands for (None: let it through unchanged)."""
    if isinstance(error, JobStopped | RetryableJobError | PermanentJobError):
        return error
    if isinstance(error, ConnectorStopped):
        return JobStopped(str(error) or "The job was stopped.")
    if isinstance(error, ConnectorError):
        return PermanentJobError(f"{doing} failed: {error}")
    if isinstance(error, ServiceUnavailableException | DependencyFailureException):
        return RetryableJobError(f"{doing} failed: {error.message}")
    if isinstance(error, BackupServiceError):
        return PermanentJobError(f"{doing} failed: {error.message}")
    if isinstance(error, DamagedDataError | SnapshotNotFoundError):
        return PermanentJobError(f"{doing} failed: {error}")
    if isinstance(error, StorageError | RepositoryError | OSError):
        return RetryableJobError(f"{doing} failed: {type(error).__name__}: {error}")
    return None


@contextmanager
def classified(doing: str) -> Iterator[None]:
    """Turn errors raised inside into the engine's JobStopped / PermanentJobError / RetryableJobError."""
    try:
        yield
    except Exception as error:
        mapped = job_error(error, doing)
        if mapped is None or mapped is error:
            raise
        raise mapped from error


def open_point_repository(
    context: ServiceContext, recovery_point_arn: str, vault_name: str, snapshot_id: str
) -> tuple[Repository, str]:
    """Open the repository holding a point now (its cold tier once moved) and the snapshot id in it."""
    from backvault.control.recovery_points import open_recovery_point_repository

    repository, point = open_recovery_point_repository(context, recovery_point_arn)
    return repository, str(point.snapshot_id or snapshot_id)


def load_snapshot(repository: Repository, snapshot_id: str) -> Snapshot:
    """Read one snapshot object by id, verified against its name."""
    key = f"snapshots/{snapshot_id}"
    try:
        data = repository.store.get(key)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(
            snapshot_id, "its snapshot object is missing from the repository"
        ) from None
    verify_named_object(key, data)
    try:
        return Snapshot.decode(snapshot_id, data, repository.sealer)
    except (ValueError, KeyError, TypeError) as error:
        raise DamagedDataError(key, f"snapshot does not open ({error})") from None


def close_repository(repository: Repository | None) -> None:
    """Close a repository and its store (ignoring errors: it is only read or finished with)."""
    if repository is None:
        return
    try:
        repository.close()
    finally:
        repository.store.close()


# --- shared by the job services (listing, answers) -----------------------------------------------------


def new_point_id() -> str:
    """A fresh recovery point id (the last part of its ARN)."""
    return str(uuid.uuid4())


def expect_time(value: Any, where: str) -> datetime:
    """Return a timezone-aware datetime filter value, or raise InvalidRequestException."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequestException(f"{where} must be a timestamp with a time zone.")
    return value


def filter_times(
    statement: Select[Job],
    created_before: datetime | None,
    created_after: datetime | None,
    complete_before: datetime | None,
    complete_after: datetime | None,
) -> Select[Job]:
    """Apply AWS's ByCreatedBefore/After and ByCompleteBefore/After filters to a job query."""
    if created_before is not None:
        statement = statement.where(Job.creation_date < expect_time(created_before, "ByCreatedBefore"))
    if created_after is not None:
        statement = statement.where(Job.creation_date > expect_time(created_after, "ByCreatedAfter"))
    if complete_before is not None:
        statement = statement.where(Job.completion_date < expect_time(complete_before, "ByCompleteBefore"))
    if complete_after is not None:
        statement = statement.where(Job.completion_date > expect_time(complete_after, "ByCompleteAfter"))
    return statement


def paginate_jobs(
    session: Session,
    statement: Select[Job],
    operation: str,
    next_token: str | None,
    max_results: int | None,
) -> tuple[list[Job], str | None]:
    """Page through jobs newest first (creation date, then id), keyset-based like control/pagination."""
    size = page_size(max_results)
    after = decode_token(next_token, operation, 2)
    if after is not None:
        try:
            created = datetime.fromisoformat(str(after[0]))
        except ValueError:
            raise InvalidParameterValueException(
                f"NextToken is not a token returned by {operation}; start again without NextToken."
            ) from None
        last_id = str(after[1])
        statement = statement.where(
            or_(Job.creation_date < created, and_(Job.creation_date == created, Job.id < last_id))
        )
    ordered = statement.order_by(Job.creation_date.desc(), Job.id.desc()).limit(size + 1)
    rows = list(session.scalars(ordered))
    if len(rows) <= size:
        return rows, None
    page = rows[:size]
    return page, encode_token(operation, [page[-1].creation_date.isoformat(), page[-1].id])


def percent_done(job: Job) -> str:
    """AWS's PercentDone: finished jobs are at 100, others report what they know."""
    if job.state in (JobState.COMPLETED.value, JobState.PARTIAL.value):
        return "100.0"
    if job.backup_size_in_bytes and job.bytes_transferred:
        return f"{min(99.0, 100.0 * job.bytes_transferred / job.backup_size_in_bytes):.1f}"
    return "0.0"


def vault_arn_of(session: Session, context: ServiceContext, job: Job) -> str | None:
    """The ARN of a job's vault: recorded at start, else from the vault row if it still exists."""
    recorded = (job.parameters or {}).get("BackupVaultArn")
    if recorded:
        return str(recorded)
    if job.vault_name is None:
        return None
    vault = session.get(BackupVault, job.vault_name)
    return vault.arn if vault is not None else None


# --- snapshots of jobs ---------------------------------------------------------------------------------


def point_tag(point_id: str) -> str:
    """The snapshot tag that ties a snapshot to its recovery point (so a retry finds it again)."""
    return f"backvault:recovery-point={point_id}"


def verify_snapshot(repository: Repository, snapshot: Snapshot) -> list[str]:
    """Load every tree of a snapshot and check that every chunk it names is in the index."""
    problems: list[str] = []
    seen: set[str] = set()
    pending: list[tuple[str, str]] = [(snapshot.tree, "")]
    while pending:
        tree_id, path = pending.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        try:
            tree = repository.load_tree(tree_id)
        except DamagedDataError as error:
            problems.append(f"{path or '/'}: tree {tree_id[:12]} cannot be read ({error.reason})")
            continue
        for node in tree.nodes:
            name = f"{path}/{os.fsdecode(node.name)}"
            if node.subtree is not None:
                pending.append((node.subtree, name))
            missing = sum(1 for chunk_id in node.content if not repository.has_chunk(chunk_id))
            if missing:
                problems.append(f"{name}: {missing} chunk(s) missing from the index")
    return problems
