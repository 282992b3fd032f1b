"""Operator commands over jobs: ``jobs list|describe|stop``, ``backup-now`` and ``restore``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from backvault.cli.api_client import ApiClient, ApiError
from backvault.cli.common import EXIT_PARTIAL, err_console, fail
from backvault.cli.operator_output import (
    TERMINAL_BACKUP_STATES,
    TERMINAL_RESTORE_STATES,
    EndpointOption,
    JsonOption,
    ProfileOption,
    api_errors,
    connect,
    default_role_arn,
    emit_json,
    find_point_vault,
    parse_pairs,
    print_fields,
    print_table,
    report,
    say,
    size,
)

jobs_app = typer.Typer(help="Backup, restore and copy jobs (AWS Backup API).", no_args_is_help=True)

BACKUP_STATES = (
    "CREATED",
    "PENDING",
    "RUNNING",
    "ABORTING",
    "ABORTED",
    "COMPLETED",
    "FAILED",
    "EXPIRED",
    "PARTIAL",
)
RESTORE_STATES = ("PENDING", "RUNNING", "COMPLETED", "ABORTED", "FAILED")
COPY_STATES = ("CREATED", "RUNNING", "COMPLETED", "FAILED", "PARTIAL")
# The restore metadata member that says where a restored copy goes, per resource type (--to sets it).
RESTORE_TARGET_KEYS = {
    "Filesystem": "TargetPath",
    "PostgreSQL": "DatabaseName",
    "MySQL": "DatabaseName",
    "SQLite": "DatabasePath",
    "Redis": "TargetDb",
    "S3": "TargetBucket",
    "DynamoDB": "TargetTableName",
}


class JobType(StrEnum):
    """The kinds of jobs ``jobs list`` can show."""

    BACKUP = "backup"
    RESTORE = "restore"
    COPY = "copy"


STATES_OF = {JobType.BACKUP: BACKUP_STATES, JobType.RESTORE: RESTORE_STATES, JobType.COPY: COPY_STATES}

WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for the job to end and print how it ended.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="With --wait: give up after this many seconds (0: never).", min=0)
]
PollOption = Annotated[
    float, typer.Option("--poll", help="With --wait: seconds between status checks.", min=0.05)
]
RoleOption = Annotated[
    str | None,
    typer.Option(
        "--iam-role-arn",
        help="IAM role recorded with the job (default: AWS Backup's default service role).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``jobs``, ``backup-now`` and ``restore`` to the app."""
    app.add_typer(jobs_app, name="jobs")
    app.command("backup-now")(backup_now)
    app.command("restore")(restore)


# --- jobs -------------------------------------------------------------------------------------------


@jobs_app.command("list")
def list_jobs(
    job_type: Annotated[
        JobType | None, typer.Option("--type", help="Only jobs of this kind (default: all).")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="Only jobs in this state (RUNNING, FAILED...).")
    ] = None,
    resource_arn: Annotated[
        str | None, typer.Option("--resource", help="Only jobs of this resource ARN.", show_default=False)
    ] = None,
    since_hours: Annotated[
        float | None,
        typer.Option(
            "--since-hours", help="Only jobs created in the last N hours.", min=0, show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """List jobs, newest first."""
    wanted = state.upper() if state else None
    if wanted and wanted not in {*BACKUP_STATES, *RESTORE_STATES, *COPY_STATES}:
        fail(f"--state {state!r} is not a job state; use one of {', '.join(BACKUP_STATES)}")
    if wanted and job_type is not None and wanted not in STATES_OF[job_type]:
        allowed = ", ".join(STATES_OF[job_type])
        fail(f"--state {wanted} does not apply to {job_type.value} jobs; use one of {allowed}")
    after = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours is not None else None
    kinds = [job_type] if job_type else list(JobType)
    client = connect(profile, endpoint_url)
    answer: dict[str, list[dict[str, Any]]] = {}
    with api_errors():
        for kind in kinds:
            jobs = list_jobs_of(client, kind, state=wanted, resource_arn=resource_arn, created_after=after)
            if jobs is not None:
                answer[_result_key(kind)] = jobs
    if as_json:
        emit_json(answer)
        return
    rows = [(kind, job) for kind in kinds for job in answer.get(_result_key(kind), [])]
    rows.sort(key=lambda item: item[1].get("CreationDate") or datetime.min.replace(tzinfo=UTC), reverse=True)
    print_table(
        ("Type", "JobId", "State", "Resource", "Vault", "Created", "Completed", "Size", "Message"),
        [_job_row(kind, job) for kind, job in rows],
        no_wrap=("JobId", "State"),
        empty="no jobs match",
    )


def list_jobs_of(
    client: ApiClient,
    kind: JobType,
    *,
    state: str | None = None,
    resource_arn: str | None = None,
    created_after: datetime | None = None,
) -> list[dict[str, Any]] | None:
    """Return the jobs of one kind matching the filters (None when the state does not apply to it)."""
    filters: dict[str, Any] = {}
    if created_after is not None:
        filters["ByCreatedAfter"] = created_after
    if kind is JobType.BACKUP:
        if state and state not in BACKUP_STATES:
            return None
        filters.update({"ByState": state, "ByResourceArn": resource_arn})
        return client.collect("list_backup_jobs", "BackupJobs", **_present(filters))
    if kind is JobType.COPY:
        if state and state not in COPY_STATES:
            return None
        filters.update({"ByState": state, "ByResourceArn": resource_arn})
        return client.collect("list_copy_jobs", "CopyJobs", **_present(filters))
    if state and state not in RESTORE_STATES:
        return None
    if resource_arn:
        jobs = client.collect(
            "list_restore_jobs_by_protected_resource",
            "RestoreJobs",
            **_present({"ResourceArn": resource_arn, "ByStatus": state}),
        )
        return [job for job in jobs if created_after is None or job["CreationDate"] > created_after]
    filters["ByStatus"] = state
    return client.collect("list_restore_jobs", "RestoreJobs", **_present(filters))


def _present(members: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in members.items() if value is not None}


def _result_key(kind: JobType) -> str:
    return {JobType.BACKUP: "BackupJobs", JobType.RESTORE: "RestoreJobs", JobType.COPY: "CopyJobs"}[kind]


def job_id_of(job: dict[str, Any]) -> str:
    """Return a job member's id, whatever its kind."""
    return str(job.get("BackupJobId") or job.get("RestoreJobId") or job.get("CopyJobId") or "-")


def job_state_of(job: dict[str, Any]) -> str:
    """Return a job member's state (restore jobs call it Status)."""
    return str(job.get("State") or job.get("Status") or "-")


def _job_row(kind: JobType, job: dict[str, Any]) -> tuple[Any, ...]:
    if kind is JobType.BACKUP:
        resource, vault = job.get("ResourceName") or job.get("ResourceArn"), job.get("BackupVaultName")
    elif kind is JobType.COPY:
        resource = job.get("ResourceName") or job.get("ResourceArn")
        vault = str(job.get("DestinationBackupVaultArn", "")).rpartition(":")[2] or None
    else:
        resource = job.get("SourceResourceArn") or job.get("RecoveryPointArn")
        vault = str(job.get("BackupVaultArn", "")).rpartition(":")[2] or None
    return (
        kind.value,
        job_id_of(job),
        job_state_of(job),
        resource,
        vault,
        job.get("CreationDate"),
        job.get("CompletionDate"),
        size(job.get("BackupSizeInBytes")),
        job.get("StatusMessage"),
    )


@jobs_app.command("describe")
def describe_job(
    job_id: Annotated[str, typer.Argument(help="A backup, restore or copy job id.")],
    job_type: Annotated[
        JobType | None, typer.Option("--type", help="The job's kind (default: found by trying each).")
    ] = None,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show one backup, restore or copy job."""
    client = connect(profile, endpoint_url)
    with api_errors():
        kind, answer = describe_any_job(client, job_id, job_type)
    if as_json:
        emit_json({"JobType": kind.value, **answer})
    else:
        print_fields(answer, title=f"{kind.value} job {job_id}")


def describe_any_job(
    client: ApiClient, job_id: str, job_type: JobType | None = None
) -> tuple[JobType, dict[str, Any]]:
    """Describe a job of a given kind, or of whichever kind has that id."""
    calls = {
        JobType.BACKUP: ("describe_backup_job", "BackupJobId"),
        JobType.RESTORE: ("describe_restore_job", "RestoreJobId"),
        JobType.COPY: ("describe_copy_job", "CopyJobId"),
    }
    last_error: ApiError | None = None
    for kind in [job_type] if job_type else list(JobType):
        operation, member = calls[kind]
        try:
            answer = client.call(operation, **{member: job_id})
        except ApiError as error:
            if error.code != "ResourceNotFoundException":
                raise
            last_error = error
            continue
        return kind, answer.get("CopyJob", answer) if kind is JobType.COPY else answer
    if job_type is None:
        raise ApiError("ResourceNotFoundException", f"No backup, restore or copy job has id {job_id!r}.", 404)
    assert last_error is not None
    raise last_error


@jobs_app.command("stop")
def stop_job(
    job_id: Annotated[str, typer.Argument(help="A backup job id.")],
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Stop a backup job (a waiting one at once, a running one at its next heartbeat)."""
    client = connect(profile, endpoint_url)
    with api_errors():
        client.call("stop_backup_job", BackupJobId=job_id)
    report(
        {"BackupJobId": job_id, "StopRequested": True}, as_json, message=f"asked backup job {job_id} to stop"
    )


# --- backup-now -------------------------------------------------------------------------------------


def backup_now(
    resource_arn: Annotated[str, typer.Argument(help="The resource's ARN (see 'backvault resources list').")],
    vault: Annotated[str, typer.Option("--vault", help="The backup vault to store the recovery point in.")],
    delete_after_days: Annotated[
        int | None,
        typer.Option("--delete-after-days", help="Expire the recovery point after N days.", min=1),
    ] = None,
    cold_after_days: Annotated[
        int | None,
        typer.Option(
            "--cold-after-days", help="Move the recovery point to cold storage after N days.", min=1
        ),
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE recovery point tag (repeatable).")
    ] = None,
    iam_role_arn: RoleOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 0,
    poll: PollOption = 2.0,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Start an on-demand backup of one resource (StartBackupJob); with --wait, follow it to its end.

    With --wait the exit code says how it ended: 0 COMPLETED, 3 PARTIAL, 1 anything else.
    """
    lifecycle = _present(
        {"DeleteAfterDays": delete_after_days, "MoveToColdStorageAfterDays": cold_after_days}
    )
    client = connect(profile, endpoint_url)
    with api_errors():
        vault_arn = client.call("describe_backup_vault", BackupVaultName=vault).get("BackupVaultArn", "")
        parameters: dict[str, Any] = {
            "BackupVaultName": vault,
            "ResourceArn": resource_arn,
            "IamRoleArn": iam_role_arn or default_role_arn(str(vault_arn)),
        }
        if lifecycle:
            parameters["Lifecycle"] = lifecycle
        if tags:
            parameters["RecoveryPointTags"] = parse_pairs(tags, "--tag")
        started = client.call("start_backup_job", **parameters)
        job_id = started["BackupJobId"]
        if not wait:
            if as_json:
                emit_json(started)
            else:
                say(
                    f"started backup job {job_id} (recovery point {started.get('RecoveryPointArn')}); "
                    f"follow it with 'backvault jobs describe {job_id}'"
                )
            return
        job = _wait(
            lambda: client.call("describe_backup_job", BackupJobId=job_id),
            "State",
            TERMINAL_BACKUP_STATES,
            f"backup job {job_id}",
            timeout,
            poll,
        )
    _report_end(job, "State", f"backup job {job_id}", as_json, [("RecoveryPointArn", "recovery point")])


def _wait(
    describe: Callable[[], dict[str, Any]],
    state_key: str,
    terminal: frozenset[str],
    what: str,
    timeout: float,
    poll: float,
) -> dict[str, Any]:
    """Describe the job until it reaches a terminal state; state changes are shown on stderr."""
    started = time.monotonic()
    shown = ""
    while True:
        job = describe()
        state = str(job.get(state_key, "-"))
        progress = job.get("PercentDone")
        line = f"{what}: {state}" + (f" {progress}%" if progress not in (None, "", "0.0", "0") else "")
        if line != shown:
            err_console.print(line, highlight=False, markup=False)
            shown = line
        if state in terminal:
            return job
        if timeout and time.monotonic() - started > timeout:
            fail(
                f"{what} is still {state} after {timeout:g} s; follow it with "
                f"'backvault jobs describe {what.rpartition(' ')[2]}'"
            )
        time.sleep(poll)


def _report_end(
    job: dict[str, Any], state_key: str, what: str, as_json: bool, facts: list[tuple[str, str]]
) -> None:
    """Print how a job ended; exit 1 unless it completed (3 when it completed partially)."""
    state = str(job.get(state_key))
    if as_json:
        emit_json(job)
    else:
        details = [f"{label} {job[key]}" for key, label in facts if job.get(key)]
        if job.get("BackupSizeInBytes") is not None:
            details.append(size(job["BackupSizeInBytes"]))
        say(f"{what} {state}" + (f": {', '.join(details)}" if details else ""))
    if state == "PARTIAL":
        err_console.print(f"{what} is PARTIAL: {job.get('StatusMessage', '')}", highlight=False, markup=False)
        raise typer.Exit(EXIT_PARTIAL)
    if state != "COMPLETED":
        fail(f"{what} ended {state}: {job.get('StatusMessage') or 'no reason given'}")


# --- restore ----------------------------------------------------------------------------------------


def restore(
    recovery_point_arn: Annotated[str, typer.Argument(help="The recovery point's ARN.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Where the copy goes: a path (Filesystem), database name (PostgreSQL, MySQL), database "
            "file (SQLite), database number (Redis), bucket (S3) or table (DynamoDB). Default: a new copy.",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", help="KEY=VALUE restore metadata, overriding defaults (repeatable)."),
    ] = None,
    vault: Annotated[
        str | None,
        typer.Option("--vault", help="The point's vault (default: searched for).", show_default=False),
    ] = None,
    iam_role_arn: RoleOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 0,
    poll: PollOption = 2.0,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Restore a recovery point (StartRestoreJob with the point's restore metadata, adjusted by --to).

    With --wait the exit code is 0 only when the restore COMPLETED.
    """
    overrides = parse_pairs(metadata, "--metadata")
    client = connect(profile, endpoint_url)
    with api_errors():
        vault_name = vault or find_point_vault(client, recovery_point_arn)
        described = client.call(
            "get_recovery_point_restore_metadata",
            BackupVaultName=vault_name,
            RecoveryPointArn=recovery_point_arn,
        )
        resource_type = str(described.get("ResourceType") or "")
        chosen = dict(described.get("RestoreMetadata") or {})
        if to is not None:
            key = RESTORE_TARGET_KEYS.get(resource_type)
            if key is None:
                fail(
                    f"--to is not known for {resource_type or 'this'} recovery points; set the target with "
                    f"--metadata KEY=VALUE (this point accepts: {', '.join(sorted(chosen)) or 'nothing'})"
                )
            chosen[key] = to
        chosen.update(overrides)
        parameters: dict[str, Any] = {
            "RecoveryPointArn": recovery_point_arn,
            "Metadata": chosen,
            "IamRoleArn": iam_role_arn or default_role_arn(str(described.get("BackupVaultArn", ""))),
        }
        if resource_type:
            parameters["ResourceType"] = resource_type
        started = client.call("start_restore_job", **parameters)
        job_id = started["RestoreJobId"]
        if not wait:
            if as_json:
                emit_json({**started, "Metadata": chosen})
            else:
                say(
                    f"started restore job {job_id} with {_metadata_text(chosen)}; follow it with "
                    f"'backvault jobs describe {job_id}'"
                )
            return
        if not as_json:
            err_console.print(f"restoring with {_metadata_text(chosen)}", highlight=False, markup=False)
        job = _wait(
            lambda: client.call("describe_restore_job", RestoreJobId=job_id),
            "Status",
            TERMINAL_RESTORE_STATES,
            f"restore job {job_id}",
            timeout,
            poll,
        )
    _report_end(job, "Status", f"restore job {job_id}", as_json, [("CreatedResourceArn", "restored as")])


def _metadata_text(metadata: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(metadata.items())) or "the defaults"
