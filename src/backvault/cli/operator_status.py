"""``backvault status``: a one-screen health summary of a backvault server, read through its API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from backvault.cli.api_client import ApiClient, ApiError
from backvault.cli.operator_jobs import JobType, job_id_of, job_state_of, list_jobs_of
from backvault.cli.operator_output import (
    EndpointOption,
    JsonOption,
    ProfileOption,
    api_errors,
    connect,
    emit_json,
    print_table,
    say,
    when,
)

ACTIVE_STATES = frozenset({"CREATED", "PENDING", "RUNNING", "ABORTING"})
FAILED_STATES = frozenset({"FAILED", "ABORTED", "EXPIRED", "PARTIAL"})
ROWS_PER_SECTION = 10


def register(app: typer.Typer) -> None:
    """Add ``status`` to the app."""
    app.command("status")(status)


def status(
    hours: Annotated[
        float, typer.Option("--hours", help="The window: jobs and backups of the last N hours.", min=1)
    ] = 24,
    as_json: JsonOption = False,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show vaults, recent jobs by state, running jobs, resources without a recent backup and failures."""
    client = connect(profile, endpoint_url)
    now = datetime.now(UTC)
    with api_errors():
        summary = gather_status(client, now, hours)
    if as_json:
        emit_json(summary)
        return
    _render(summary, client, hours)


def gather_status(client: ApiClient, now: datetime, hours: float) -> dict[str, Any]:
    """Collect the summary's facts from the API."""
    since = now - timedelta(hours=hours)
    vaults = [
        {
            "BackupVaultName": vault["BackupVaultName"],
            "NumberOfRecoveryPoints": vault.get("NumberOfRecoveryPoints", 0),
            "Locked": bool(vault.get("Locked", False)),
        }
        for vault in client.collect("list_backup_vaults", "BackupVaultList")
    ]
    recent: list[tuple[JobType, dict[str, Any]]] = []
    active: dict[str, tuple[JobType, dict[str, Any]]] = {}
    for kind in JobType:
        for job in list_jobs_of(client, kind, created_after=since) or []:
            recent.append((kind, job))
            if job_state_of(job) in ACTIVE_STATES:
                active[job_id_of(job)] = (kind, job)
        # A job started before the window may still be running.
        for job in list_jobs_of(client, kind, state="RUNNING") or []:
            active.setdefault(job_id_of(job), (kind, job))
    by_state: dict[str, dict[str, int]] = {}
    for kind, job in recent:
        counts = by_state.setdefault(kind.value, {})
        counts[job_state_of(job)] = counts.get(job_state_of(job), 0) + 1
    failed = [_job_brief(kind, job) for kind, job in recent if job_state_of(job) in FAILED_STATES]
    return {
        "Endpoint": client.profile.endpoint_url,
        "GeneratedAt": now,
        "WindowHours": hours,
        "Vaults": vaults,
        "JobsByState": by_state,
        "ActiveJobs": [_job_brief(kind, job) for kind, job in active.values()],
        "ResourcesWithoutRecentBackup": _stale_resources(client, since),
        "FailedJobs": failed,
    }


def _job_brief(kind: JobType, job: dict[str, Any]) -> dict[str, Any]:
    brief = {
        "JobType": kind.value,
        "JobId": job_id_of(job),
        "State": job_state_of(job),
        "ResourceArn": job.get("ResourceArn") or job.get("SourceResourceArn") or job.get("RecoveryPointArn"),
        "CreationDate": job.get("CreationDate"),
        "PercentDone": job.get("PercentDone"),
        "StatusMessage": job.get("StatusMessage"),
    }
    return {key: value for key, value in brief.items() if value is not None}


def _stale_resources(client: ApiClient, since: datetime) -> list[dict[str, Any]]:
    """Protected resources last backed up before ``since``, and discovered ones never backed up."""
    stale: dict[str, dict[str, Any]] = {}
    for item in client.collect("list_protected_resources", "Results"):
        last = item.get("LastBackupTime")
        if last is None or last < since:
            stale[item["ResourceArn"]] = _resource_brief(item)
    try:
        discovered = client.extension_collect("/backvault/resources", "Resources", {"includeVanished": False})
    except ApiError as error:
        if error.code not in ("UnsupportedOperationException", "UnknownOperationException"):
            raise
        discovered = []  # a server without discovery: protected resources are all there is
    for item in discovered:
        if item.get("LastBackupTime") is None and not item.get("Vanished"):
            stale.setdefault(item["ResourceArn"], _resource_brief(item))
    return sorted(
        stale.values(), key=lambda item: (item.get("LastBackupTime") is not None, item["ResourceArn"])
    )


def _resource_brief(item: dict[str, Any]) -> dict[str, Any]:
    brief = {
        "ResourceArn": item["ResourceArn"],
        "ResourceType": item.get("ResourceType"),
        "ResourceName": item.get("ResourceName"),
        "LastBackupTime": item.get("LastBackupTime"),
    }
    return {key: value for key, value in brief.items() if value is not None}


def _render(summary: dict[str, Any], client: ApiClient, hours: float) -> None:
    window = f"{hours:g} h"
    say(f"backvault at {summary['Endpoint']} (profile {client.profile.name}), {when(summary['GeneratedAt'])}")
    vaults = summary["Vaults"]
    points = sum(vault["NumberOfRecoveryPoints"] or 0 for vault in vaults)
    print_table(
        ("Vault", "RecoveryPoints", "Locked"),
        [(vault["BackupVaultName"], vault["NumberOfRecoveryPoints"], vault["Locked"]) for vault in vaults],
        title=f"Vaults ({len(vaults)}, {points} recovery points)",
        no_wrap=("Vault",),
        empty="none",
    )
    states = sorted({state for counts in summary["JobsByState"].values() for state in counts})
    print_table(
        ("Jobs", *states, "Total"),
        [
            (kind, *[counts.get(state, 0) for state in states], sum(counts.values()))
            for kind, counts in sorted(summary["JobsByState"].items())
        ],
        title=f"Jobs in the last {window}",
        empty="none",
    )
    _limited(
        "Running and waiting jobs",
        ("Type", "JobId", "State", "Resource", "Created", "Done%"),
        [
            (
                job["JobType"],
                job["JobId"],
                job["State"],
                job.get("ResourceArn"),
                job.get("CreationDate"),
                job.get("PercentDone"),
            )
            for job in summary["ActiveJobs"]
        ],
        "backvault jobs list --state RUNNING",
    )
    _limited(
        f"Resources without a backup in the last {window}",
        ("ResourceArn", "Type", "LastBackup"),
        [
            (item["ResourceArn"], item.get("ResourceType"), item.get("LastBackupTime") or "never")
            for item in summary["ResourcesWithoutRecentBackup"]
        ],
        "backvault resources list",
    )
    _limited(
        f"Failed jobs in the last {window}",
        ("Type", "JobId", "State", "Resource", "Reason"),
        [
            (job["JobType"], job["JobId"], job["State"], job.get("ResourceArn"), job.get("StatusMessage"))
            for job in summary["FailedJobs"]
        ],
        "backvault jobs list --state FAILED",
    )


def _limited(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]], more_command: str) -> None:
    print_table(
        columns,
        rows[:ROWS_PER_SECTION],
        title=f"{title} ({len(rows)})",
        no_wrap=("JobId", "ResourceArn"),
        empty="none",
    )
    if len(rows) > ROWS_PER_SECTION:
        say(f"... and {len(rows) - ROWS_PER_SECTION} more: {more_command}")
