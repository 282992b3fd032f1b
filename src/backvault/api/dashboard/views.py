"""What each dashboard page shows: the control layer's answers, gated by the same IAM check as the API.

Every function takes the signed-in principal and raises PageForbidden, naming the AWS action, when
the page's action is refused; the routes turn that into a 403 page. The data comes from the control
services (the same answers the API serialises); only the overview's counts read the catalog directly
(queries.py). Nothing here changes anything, apart from the evaluation a framework gets the first
time its compliance is shown (describe_framework_compliance's own behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from backvault.api.auth import authorize
from backvault.api.dashboard import charts, queries
from backvault.control.audit import evaluate_controls, findings
from backvault.control.backup_jobs import list_backup_jobs
from backvault.control.context import ServiceContext
from backvault.control.copy_jobs import list_copy_jobs
from backvault.control.discovery import list_discovered_resources, list_protected_resources
from backvault.control.frameworks import describe_framework_compliance, list_frameworks
from backvault.control.identity import Principal
from backvault.control.job_engine import JobState
from backvault.control.recovery_points import list_recovery_points_by_backup_vault
from backvault.control.restore_jobs import list_restore_jobs
from backvault.control.restore_testing import list_restore_testing_plans
from backvault.control.restore_testing_results import list_restore_tests
from backvault.control.vaults import list_backup_vaults
from backvault.domain.errors import AccessDeniedException, BackupServiceError

ANY = "*"
CHART_DAYS = 14
JOB_LIMIT = 100  # newest jobs shown per job type
POINT_LIMIT = 200  # newest recovery points shown per vault
RESOURCE_LIMIT = 5000
# Job type (as the page's ?type= names it) -> the action that lists it.
JOB_TYPES: dict[str, str] = {
    "BACKUP": "backup:ListBackupJobs",
    "COPY": "backup:ListCopyJobs",
    "RESTORE": "backup:ListRestoreJobs",
}
JOB_STATES = tuple(state.value for state in JobState)


class PageForbidden(Exception):
    """The signed-in user may not perform the action a page shows."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(message)
        self.action = action
        self.message = message


class BadPageRequest(Exception):
    """A query string value the page does not know (shown as a 400 page)."""


def require(
    context: ServiceContext, principal: Principal, action: str, resources: Sequence[str] = (ANY,)
) -> None:
    """Authorize ``action`` as the API would, or raise PageForbidden naming it."""
    try:
        authorize(context, principal, action, list(resources))
    except AccessDeniedException as error:
        raise PageForbidden(action, error.message) from None


def allowed(
    context: ServiceContext, principal: Principal, action: str, resources: Sequence[str] = (ANY,)
) -> bool:
    """Tell whether ``action`` is allowed (without raising)."""
    try:
        require(context, principal, action, resources)
    except PageForbidden:
        return False
    return True


# --- overview ------------------------------------------------------------------------------------


def overview(context: ServiceContext, principal: Principal) -> dict[str, Any]:
    """Counts, the two charts and the latest failures; each part only if its list action is allowed."""
    now = context.now()
    denied: list[str] = []
    page: dict[str, Any] = {"now": now}

    def permitted(action: str, resources: Sequence[str] = (ANY,)) -> bool:
        ok = allowed(context, principal, action, resources)
        if not ok and action not in denied:
            denied.append(action)
        return ok

    if permitted("backup:ListProtectedResources"):
        page["protected"], page["unprotected"] = queries.resource_counts(context)
    job_types = [job_type for job_type, action in JOB_TYPES.items() if permitted(action)]
    if job_types:
        page["jobs_last_day"] = queries.job_counts_since(context, now - timedelta(hours=24), job_types)
        page["job_types"] = job_types
        page["failures"] = queries.latest_failures(context, job_types)
    if "BACKUP" in job_types:
        days = queries.backup_jobs_per_day(context, now, CHART_DAYS)
        page["jobs_chart"] = charts.stacked_bars(days, title=f"Backup jobs per day, last {CHART_DAYS} days")
    vaults = _visible_vaults(context, principal, permitted)
    if vaults is not None:
        totals = queries.vault_totals(context, [vault["BackupVaultName"] for vault in vaults])
        page["vault_totals"] = totals
        page["recovery_points"] = sum(item.recovery_points for item in totals)
        page["backup_bytes"] = sum(item.backup_bytes for item in totals)
        page["bytes_chart"] = charts.horizontal_bars(
            [(item.vault_name, item.backup_bytes) for item in totals],
            title="Backup size per vault",
            format_value=human_size,
        )
    if len(denied) == len(JOB_TYPES) + 2:  # nothing at all to show
        require(context, principal, "backup:ListBackupJobs")
    page["denied"] = denied
    return page


def _visible_vaults(
    context: ServiceContext, principal: Principal, permitted: Callable[..., bool]
) -> list[dict[str, Any]] | None:
    """The vaults whose recovery points the user may list, or None if none may be listed."""
    vaults = _all_vaults(context)
    action = "backup:ListRecoveryPointsByBackupVault"
    if not vaults:
        return [] if permitted(action) else None
    visible = [vault for vault in vaults if allowed(context, principal, action, [vault["BackupVaultArn"]])]
    if not visible:
        permitted(action)  # records the refusal
        return None
    return visible


def _all_vaults(context: ServiceContext) -> list[dict[str, Any]]:
    vaults: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        answer = list_backup_vaults(context, next_token=token)
        vaults.extend(answer["BackupVaultList"])
        token = answer.get("NextToken")
        if not token:
            return sorted(vaults, key=lambda vault: str(vault["BackupVaultName"]))


# --- protected resources -------------------------------------------------------------------------


def resources(context: ServiceContext, principal: Principal) -> dict[str, Any]:
    """Every known resource with its last backup; unprotected ones too when discovery may be listed."""
    require(context, principal, "backup:ListProtectedResources")
    with_discovery = allowed(context, principal, "backvault:ListDiscoveredResources")
    listing = list_discovered_resources if with_discovery else list_protected_resources
    key = "Resources" if with_discovery else "Results"
    rows = _all_pages(lambda token: listing(context, next_token=token), key, RESOURCE_LIMIT)
    for row in rows:
        if row.get("LastBackupTime") is not None:
            row["Protection"] = "protected"
        elif row.get("Vanished"):
            row["Protection"] = "vanished"
        else:
            row["Protection"] = "unprotected"
    rows.sort(
        key=lambda row: (
            row["Protection"] != "unprotected",
            str(row["ResourceType"]),
            str(row["ResourceArn"]),
        )
    )
    return {"resources": rows, "with_discovery": with_discovery}


# --- jobs ----------------------------------------------------------------------------------------


def jobs(
    context: ServiceContext, principal: Principal, *, job_type: str | None, state: str | None
) -> dict[str, Any]:
    """The newest backup, copy and restore jobs (or one type), optionally in one state."""
    if job_type is not None and job_type not in JOB_TYPES:
        raise BadPageRequest(f"Unknown job type {job_type!r}: use one of {', '.join(JOB_TYPES)}.")
    if state is not None and state not in JOB_STATES:
        raise BadPageRequest(f"Unknown job state {state!r}: use one of {', '.join(JOB_STATES)}.")
    types = [job_type] if job_type is not None else list(JOB_TYPES)
    for kind in types:
        require(context, principal, JOB_TYPES[kind])
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for kind in types:
        try:
            rows.extend(_jobs_of_type(context, kind, state))
        except BackupServiceError as error:  # a state this kind of job never has
            notes.append(f"{kind.title()} jobs: {error.message}")
    rows.sort(key=lambda row: row["CreationDate"], reverse=True)
    return {"jobs": rows, "notes": notes, "job_type": job_type, "state": state}


def _jobs_of_type(context: ServiceContext, kind: str, state: str | None) -> list[dict[str, Any]]:
    if kind == "BACKUP":
        answer = list_backup_jobs(context, by_state=state, max_results=JOB_LIMIT)
        return [
            _job_row(kind, item["BackupJobId"], item["State"], item, vault=item.get("BackupVaultName"))
            for item in answer["BackupJobs"]
        ]
    if kind == "COPY":
        answer = list_copy_jobs(context, by_state=state, max_results=JOB_LIMIT)
        return [
            _job_row(
                kind,
                item["CopyJobId"],
                item["State"],
                item,
                vault=_vault_name(item.get("SourceBackupVaultArn")),
                destination=_vault_name(item.get("DestinationBackupVaultArn")),
            )
            for item in answer["CopyJobs"]
        ]
    answer = list_restore_jobs(context, by_status=state, max_results=JOB_LIMIT)
    return [
        _job_row(
            kind,
            item["RestoreJobId"],
            item["Status"],
            item,
            vault=_vault_name(item.get("BackupVaultArn")),
            resource=item.get("SourceResourceArn"),
        )
        for item in answer["RestoreJobs"]
    ]


def _job_row(
    kind: str,
    job_id: str,
    state: str,
    item: dict[str, Any],
    *,
    vault: str | None,
    destination: str | None = None,
    resource: str | None = None,
) -> dict[str, Any]:
    return {
        "JobType": kind,
        "JobId": job_id,
        "State": state,
        "ResourceArn": resource or item.get("ResourceArn"),
        "ResourceName": item.get("ResourceName"),
        "ResourceType": item.get("ResourceType"),
        "BackupVaultName": vault,
        "DestinationVaultName": destination,
        "RecoveryPointArn": item.get("RecoveryPointArn") or item.get("SourceRecoveryPointArn"),
        "CreationDate": item["CreationDate"],
        "CompletionDate": item.get("CompletionDate"),
        "BackupSizeInBytes": item.get("BackupSizeInBytes"),
        "StatusMessage": item.get("StatusMessage"),
    }


def _vault_name(vault_arn: str | None) -> str | None:
    if not vault_arn:
        return None
    return vault_arn.rsplit(":", 1)[-1]


# --- recovery points -----------------------------------------------------------------------------


def recovery_points(
    context: ServiceContext, principal: Principal, *, vault_name: str | None
) -> dict[str, Any]:
    """The newest recovery points of each vault the user may list (or of one vault)."""
    action = "backup:ListRecoveryPointsByBackupVault"
    vaults = _all_vaults(context)
    if vault_name is not None:
        vaults = [vault for vault in vaults if vault["BackupVaultName"] == vault_name]
        if not vaults:
            raise BadPageRequest(f"There is no backup vault named {vault_name!r}.")
        require(context, principal, action, [vaults[0]["BackupVaultArn"]])
    visible = [vault for vault in vaults if allowed(context, principal, action, [vault["BackupVaultArn"]])]
    if not visible:
        require(context, principal, action, [vaults[0]["BackupVaultArn"]] if vaults else [ANY])
    hidden = [vault["BackupVaultName"] for vault in vaults if vault not in visible]
    sections = []
    for vault in visible:
        points = _all_pages(_points_of(context, vault["BackupVaultName"]), "RecoveryPoints", RESOURCE_LIMIT)
        points.sort(key=lambda point: point["CreationDate"], reverse=True)
        sections.append(
            {
                "vault": vault,
                "points": points[:POINT_LIMIT],
                "total": len(points),
                "total_bytes": sum(int(point.get("BackupSizeInBytes") or 0) for point in points),
            }
        )
    return {"sections": sections, "hidden": hidden, "vault_name": vault_name}


def _points_of(context: ServiceContext, vault_name: str) -> Callable[[str | None], dict[str, Any]]:
    def fetch(token: str | None) -> dict[str, Any]:
        return list_recovery_points_by_backup_vault(context, vault_name, next_token=token)

    return fetch


# --- compliance ----------------------------------------------------------------------------------


def compliance(context: ServiceContext, principal: Principal) -> dict[str, Any]:
    """Each framework's controls with their status and failing resources, and AWS's default controls."""
    require(context, principal, "backup:ListFrameworks")
    frameworks = _all_pages(lambda token: list_frameworks(context, next_token=token), "Frameworks", 1000)
    described = []
    for item in frameworks:
        if not allowed(context, principal, "backup:DescribeFramework", [item["FrameworkArn"]]):
            described.append({"summary": item, "denied": True})
            continue
        try:
            detail = describe_framework_compliance(context, item["FrameworkName"])
        except BackupServiceError as error:  # deleted between the listing and now
            described.append({"summary": item, "error": error.message})
            continue
        for control in detail["Controls"]:
            control["Failing"] = [
                row for row in control["Evaluations"] if row["ComplianceStatus"] == "NON_COMPLIANT"
            ]
        described.append({"summary": item, "detail": detail})
    evaluations = evaluate_controls(context)
    defaults: dict[str, dict[str, Any]] = {}
    for evaluation in evaluations:
        entry = defaults.setdefault(evaluation.control.value, {"compliant": 0, "failing": []})
        if evaluation.compliant:
            entry["compliant"] += 1
    for finding in findings(evaluations):
        defaults[finding.control.value]["failing"].append(finding)
    return {"frameworks": described, "defaults": defaults}


# --- restore tests -------------------------------------------------------------------------------


def restore_tests(context: ServiceContext, principal: Principal) -> dict[str, Any]:
    """Restore testing plans and the latest restore tests with their validation result."""
    require(context, principal, "backup:ListRestoreTestingPlans")
    plans = _all_pages(
        lambda token: list_restore_testing_plans(context, next_token=token), "RestoreTestingPlans", 1000
    )
    tests = list_restore_tests(context, max_results=JOB_LIMIT)
    return {"plans": plans, "tests": tests}


# --- helpers -------------------------------------------------------------------------------------


def _all_pages(fetch: Callable[[str | None], dict[str, Any]], key: str, limit: int) -> list[dict[str, Any]]:
    """Follow NextToken until the end or until ``limit`` items are gathered."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while len(items) < limit:
        answer = fetch(token)
        items.extend(answer.get(key, []))
        token = answer.get("NextToken")
        if not token:
            break
    return items[:limit]


def human_size(size: int | None) -> str:
    """Bytes in binary units, one decimal (``1.5 MiB``)."""
    if size is None:
        return "–"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def human_duration(seconds: float | None) -> str:
    """Seconds as ``1 h 02 min``, ``3 min 05 s`` or ``4.2 s``."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_time(moment: datetime | None) -> str:
    """A time in UTC to the second (``2025-05-01 12:00:00 UTC``)."""
    if moment is None:
        return "–"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def job_duration(row: dict[str, Any]) -> float | None:
    """Seconds from creation to completion of a job row, if it finished."""
    done = row.get("CompletionDate")
    return None if done is None else (done - row["CreationDate"]).total_seconds()
