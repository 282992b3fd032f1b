"""Rendering audit reports: building them from the catalog, and writing them as CSV, JSON and HTML.

``build_report`` reads what a report template covers (a framework's stored evaluations, refreshed
first, or the jobs of the last 24 hours) into a ``ReportDocument``; ``render`` turns that into bytes.
A report is a table (columns and rows of plain values) with a short summary. CSV cells that a
spreadsheet would run as a formula are prefixed with ``'``, since resource names come from the
systems being backed up; every value in the HTML page is escaped, and the page loads nothing from
anywhere (inline style, no script).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from backvault.control.catalog.activity import Job
from backvault.control.catalog.audit_models import AuditFramework
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.frameworks import (
    COMPLIANT,
    INSUFFICIENT_DATA,
    NON_COMPLIANT,
    evaluate_frameworks,
    evaluation_row_to_aws,
    framework_evaluations,
)
from backvault.domain.arn import parse_arn
from backvault.domain.audit import control_parameters
from backvault.domain.errors import InvalidParameterValueException, InvalidRequestException

RESOURCE_COMPLIANCE_REPORT = "RESOURCE_COMPLIANCE_REPORT"
CONTROL_COMPLIANCE_REPORT = "CONTROL_COMPLIANCE_REPORT"
BACKUP_JOB_REPORT = "BACKUP_JOB_REPORT"
COPY_JOB_REPORT = "COPY_JOB_REPORT"
RESTORE_JOB_REPORT = "RESTORE_JOB_REPORT"
COMPLIANCE_TEMPLATES = (RESOURCE_COMPLIANCE_REPORT, CONTROL_COMPLIANCE_REPORT)
# Job report templates and the job type (control/catalog/activity.JobType) each one lists.
JOB_TEMPLATES = {BACKUP_JOB_REPORT: "BACKUP", COPY_JOB_REPORT: "COPY", RESTORE_JOB_REPORT: "RESTORE"}
REPORT_TEMPLATES = (*COMPLIANCE_TEMPLATES, *JOB_TEMPLATES)
# Job reports cover the day before they run, as AWS's do.
JOB_REPORT_PERIOD = timedelta(hours=24)

RESOURCE_COLUMNS = (
    "FrameworkName",
    "ResourceArn",
    "ResourceType",
    "ComplianceStatus",
    "ControlsEvaluated",
    "NonCompliantControls",
    "Reasons",
    "NonCompliantSince",
    "EvaluationTime",
    "AccountId",
    "Region",
)
CONTROL_COLUMNS = (
    "FrameworkName",
    "ControlName",
    "ComplianceStatus",
    "ResourcesEvaluated",
    "CompliantResources",
    "NonCompliantResources",
    "NonCompliantResourceArns",
    "ControlInputParameters",
    "EvaluationTime",
)
_JOB_START = ("JobId", "Status", "StatusMessage", "ResourceArn", "ResourceType", "BackupVaultName")
_JOB_END = ("CreationDate", "StartedDate", "CompletionDate", "AccountId", "Region")
JOB_COLUMNS = {
    BACKUP_JOB_REPORT: (*_JOB_START, "RecoveryPointArn", *_JOB_END, "BackupSizeInBytes", "BytesTransferred"),
    COPY_JOB_REPORT: (
        *_JOB_START,
        "RecoveryPointArn",
        "DestinationBackupVaultArn",
        *_JOB_END,
        "BackupSizeInBytes",
    ),
    RESTORE_JOB_REPORT: (*_JOB_START, "RecoveryPointArn", *_JOB_END),
}

CSV = "CSV"
JSON = "JSON"
HTML = "HTML"
EXTENSIONS = {CSV: "csv", JSON: "json", HTML: "html"}
# Only these statuses get a colour; the class name never comes from the data itself.
_STATUS_CLASSES = {
    "COMPLIANT": "good",
    "COMPLETED": "good",
    "NON_COMPLIANT": "bad",
    "FAILED": "bad",
    "ABORTED": "bad",
    "EXPIRED": "bad",
    "PARTIAL": "warn",
    "INSUFFICIENT_DATA": "warn",
    "RUNNING": "warn",
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1b1f24}
h1{font-size:1.4rem;margin-bottom:.2rem}
.meta{color:#57606a;margin-bottom:1rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;margin:0 0 1.5rem}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}
td{word-break:break-word}
tr.bad td{background:#ffebe9}tr.warn td{background:#fff8c5}
.status.good{color:#1a7f37;font-weight:600}.status.bad{color:#cf222e;font-weight:600}
.status.warn{color:#9a6700;font-weight:600}
.empty{color:#57606a;font-style:italic}
"""


@dataclass(frozen=True)
class ReportDocument:
    """One report: what it is, when it was made, a summary and its rows."""

    title: str
    report_template: str
    report_plan_name: str
    report_job_id: str
    generated_at: datetime
    columns: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    summary: Mapping[str, Any] = field(default_factory=dict)
    period_start: datetime | None = None
    period_end: datetime | None = None
    status_column: str | None = None


def render(document: ReportDocument, report_format: str) -> bytes:
    """Render a report in CSV, JSON or HTML."""
    if report_format == CSV:
        return render_csv(document)
    if report_format == JSON:
        return render_json(document)
    if report_format == HTML:
        return render_html(document)
    raise ValueError(f"unknown report format {report_format!r}; use CSV, JSON or HTML")


def render_csv(document: ReportDocument) -> bytes:
    """Render the rows as CSV with a header line (UTF-8, CRLF line ends as RFC 4180 says)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(document.columns)
    for row in document.rows:
        writer.writerow([_csv_cell(row.get(column)) for column in document.columns])
    return buffer.getvalue().encode("utf-8")


def render_json(document: ReportDocument) -> bytes:
    """Render the whole report (summary and rows) as one JSON object."""
    body: dict[str, Any] = {
        "ReportPlanName": document.report_plan_name,
        "ReportTemplate": document.report_template,
        "ReportJobId": document.report_job_id,
        "GeneratedAt": document.generated_at,
    }
    if document.period_start is not None:
        body["PeriodStart"] = document.period_start
    if document.period_end is not None:
        body["PeriodEnd"] = document.period_end
    body["Summary"] = dict(document.summary)
    body["Columns"] = list(document.columns)
    body["Rows"] = [{column: row.get(column) for column in document.columns} for row in document.rows]
    return json.dumps(body, indent=2, default=_json_value, ensure_ascii=False).encode("utf-8")


def render_html(document: ReportDocument) -> bytes:
    """Render a readable, self-contained HTML page of the report (every value escaped)."""
    meta = (
        f"{document.report_template} · report plan {document.report_plan_name} · job {document.report_job_id}"
    )
    generated = f"Generated {format_value(document.generated_at)}"
    if document.period_start is not None and document.period_end is not None:
        generated += (
            f" · covering {format_value(document.period_start)} to {format_value(document.period_end)}"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(document.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_escape(document.title)}</h1>",
        f'<div class="meta">{_escape(meta)}<br>{_escape(generated)}</div>',
    ]
    if document.summary:
        parts.append("<dl>")
        for label, value in document.summary.items():
            parts.append(f"<dt>{_escape(label)}</dt><dd>{_escape(format_value(value))}</dd>")
        parts.append("</dl>")
    parts.append(_html_table(document))
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def format_value(value: Any) -> str:
    """Return a value as report text: times in ISO 8601 UTC, lists joined with '; ', None empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple):
        return "; ".join(format_value(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _html_table(document: ReportDocument) -> str:
    if not document.rows:
        return '<p class="empty">Nothing to report.</p>'
    header = "".join(f'<th scope="col">{_escape(column)}</th>' for column in document.columns)
    lines = [f"<table><thead><tr>{header}</tr></thead><tbody>"]
    for row in document.rows:
        status = row.get(document.status_column) if document.status_column else None
        row_class = _STATUS_CLASSES.get(str(status), "") if status is not None else ""
        cells = []
        for column in document.columns:
            text = _escape(format_value(row.get(column)))
            if column == document.status_column and row_class:
                cells.append(f'<td><span class="status {row_class}">{text}</span></td>')
            else:
                cells.append(f"<td>{text}</td>")
        attribute = f' class="{row_class}"' if row_class in ("bad", "warn") else ""
        lines.append(f"<tr{attribute}>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _csv_cell(value: Any) -> str:
    text = format_value(value)
    if isinstance(value, str) and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_value(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"cannot put {type(value).__name__} into a JSON report")


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


# --- building reports from the catalog ----------------------------------------------------------


def build_report(
    context: ServiceContext, job_id: str, plan_name: str, setting: Mapping[str, Any], now: datetime
) -> ReportDocument:
    """Build the report a ReportSetting describes, as of ``now``."""
    template = setting["ReportTemplate"]
    scope = _Scope(context, setting)
    if template in JOB_TEMPLATES:
        return _job_report(context, job_id, plan_name, template, scope, now)
    frameworks = _refreshed_frameworks(context, list(setting.get("FrameworkArns") or []))
    if template == RESOURCE_COMPLIANCE_REPORT:
        return _resource_compliance(job_id, plan_name, frameworks, scope, now)
    return _control_compliance(job_id, plan_name, frameworks, scope, now)


@dataclass(frozen=True)
class _Framework:
    name: str
    arn: str
    controls: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]


class _Scope:
    """The Accounts and Regions (storage locations) a report covers; empty, ROOT or * mean all."""

    def __init__(self, context: ServiceContext, setting: Mapping[str, Any]) -> None:
        self.context = context
        accounts = set(setting.get("Accounts") or ())
        regions = set(setting.get("Regions") or ())
        self.accounts = None if not accounts or accounts & {"ROOT", "*"} else accounts
        self.regions = None if not regions or "*" in regions else regions

    def where(self, arn: str | None) -> tuple[str, str]:
        """Return the account and region of an ARN (this installation's when the ARN has none)."""
        if arn:
            try:
                parsed = parse_arn(arn)
            except InvalidParameterValueException:
                parsed = None
            if parsed is not None and parsed.region and parsed.account:
                return parsed.account, parsed.region
        return self.context.account, self.context.default_location

    def covers(self, account: str, region: str) -> bool:
        """True when the account and region are in the report."""
        return (self.accounts is None or account in self.accounts) and (
            self.regions is None or region in self.regions
        )


def _refreshed_frameworks(context: ServiceContext, arns: list[str]) -> list[_Framework]:
    """Re-evaluate the report's frameworks, then read their controls and fresh evaluations."""
    with context.catalog.transaction() as session:
        names = {
            row.arn: row.name
            for row in session.scalars(select(AuditFramework).where(AuditFramework.arn.in_(arns)))
        }
    missing = [arn for arn in arns if arn not in names]
    if missing:
        raise InvalidRequestException(
            f"Framework(s) {', '.join(missing)} of this report plan no longer exist; update the report "
            "plan's ReportSetting.FrameworkArns."
        )
    evaluate_frameworks(context, framework_names=list(names.values()), force=True)
    result = []
    with context.catalog.transaction() as session:
        for arn in arns:
            row = session.scalars(select(AuditFramework).where(AuditFramework.arn == arn)).one()
            evaluations = [evaluation_row_to_aws(item) for item in framework_evaluations(session, row.id)]
            result.append(_Framework(row.name, row.arn, list(row.controls), evaluations))
    return result


def _resource_compliance(
    job_id: str, plan_name: str, frameworks: list[_Framework], scope: _Scope, now: datetime
) -> ReportDocument:
    rows = []
    for framework in frameworks:
        by_resource: dict[str, list[dict[str, Any]]] = {}
        for item in framework.evaluations:
            by_resource.setdefault(item["ResourceArn"], []).append(item)
        for arn, items in by_resource.items():
            account, region = scope.where(arn)
            if not scope.covers(account, region):
                continue
            failing = [item for item in items if item["ComplianceStatus"] == NON_COMPLIANT]
            rows.append(
                {
                    "FrameworkName": framework.name,
                    "ResourceArn": arn,
                    "ResourceType": items[0]["ResourceType"],
                    "ComplianceStatus": NON_COMPLIANT if failing else COMPLIANT,
                    "ControlsEvaluated": len(items),
                    "NonCompliantControls": [item["ControlName"] for item in failing],
                    "Reasons": [f"{item['ControlName']}: {item['Reason']}" for item in failing],
                    "NonCompliantSince": min((item["StatusSince"] for item in failing), default=None),
                    "EvaluationTime": max(item["EvaluationTime"] for item in items),
                    "AccountId": account,
                    "Region": region,
                }
            )
    rows.sort(
        key=lambda row: (row["FrameworkName"], row["ComplianceStatus"] == COMPLIANT, row["ResourceArn"])
    )
    failing_count = sum(1 for row in rows if row["ComplianceStatus"] == NON_COMPLIANT)
    return ReportDocument(
        title="Resource compliance report",
        report_template=RESOURCE_COMPLIANCE_REPORT,
        report_plan_name=plan_name,
        report_job_id=job_id,
        generated_at=now,
        columns=RESOURCE_COLUMNS,
        rows=tuple(rows),
        summary={
            "Frameworks": [framework.name for framework in frameworks],
            "Resources evaluated": len(rows),
            "Compliant": len(rows) - failing_count,
            "Non-compliant": failing_count,
        },
        status_column="ComplianceStatus",
    )


def _control_compliance(
    job_id: str, plan_name: str, frameworks: list[_Framework], scope: _Scope, now: datetime
) -> ReportDocument:
    rows = []
    for framework in frameworks:
        for control in framework.controls:
            name = control["ControlName"]
            items = [
                item
                for item in framework.evaluations
                if item["ControlName"] == name and scope.covers(*scope.where(item["ResourceArn"]))
            ]
            failing = [item["ResourceArn"] for item in items if item["ComplianceStatus"] == NON_COMPLIANT]
            effective = control_parameters(name, control.get("ControlInputParameters"))
            rows.append(
                {
                    "FrameworkName": framework.name,
                    "ControlName": name,
                    "ComplianceStatus": (NON_COMPLIANT if failing else COMPLIANT)
                    if items
                    else INSUFFICIENT_DATA,
                    "ResourcesEvaluated": len(items),
                    "CompliantResources": len(items) - len(failing),
                    "NonCompliantResources": len(failing),
                    "NonCompliantResourceArns": failing,
                    "ControlInputParameters": [
                        f"{key}={value}" for key, value in effective.items() if value is not None
                    ],
                    "EvaluationTime": max((item["EvaluationTime"] for item in items), default=None),
                }
            )
    failing_count = sum(1 for row in rows if row["ComplianceStatus"] == NON_COMPLIANT)
    return ReportDocument(
        title="Control compliance report",
        report_template=CONTROL_COMPLIANCE_REPORT,
        report_plan_name=plan_name,
        report_job_id=job_id,
        generated_at=now,
        columns=CONTROL_COLUMNS,
        rows=tuple(rows),
        summary={
            "Frameworks": [framework.name for framework in frameworks],
            "Controls evaluated": len(rows),
            "Compliant or no data": len(rows) - failing_count,
            "Non-compliant": failing_count,
        },
        status_column="ComplianceStatus",
    )


def _job_report(
    context: ServiceContext, job_id: str, plan_name: str, template: str, scope: _Scope, now: datetime
) -> ReportDocument:
    start = now - JOB_REPORT_PERIOD
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    with context.catalog.transaction() as session:
        locations = {
            name: location
            for name, location in session.execute(select(BackupVault.name, BackupVault.location_name))
        }
        jobs = session.scalars(
            select(Job)
            .where(
                Job.job_type == JOB_TEMPLATES[template], Job.creation_date >= start, Job.creation_date <= now
            )
            .order_by(Job.creation_date, Job.id)
        )
        for job in jobs:
            region = locations.get(job.vault_name or "", context.default_location)
            if not scope.covers(context.account, region):
                continue
            counts[job.state] = counts.get(job.state, 0) + 1
            rows.append(
                {
                    "JobId": job.id,
                    "Status": job.state,
                    "StatusMessage": job.status_message or job.error_message,
                    "ResourceArn": job.resource_arn,
                    "ResourceType": job.resource_type,
                    "BackupVaultName": job.vault_name,
                    "DestinationBackupVaultArn": job.destination_vault_arn,
                    "RecoveryPointArn": job.recovery_point_arn,
                    "CreationDate": job.creation_date,
                    "StartedDate": job.started_date,
                    "CompletionDate": job.completion_date,
                    "BackupSizeInBytes": job.backup_size_in_bytes,
                    "BytesTransferred": job.bytes_transferred,
                    "AccountId": context.account,
                    "Region": region,
                }
            )
    kind = JOB_TEMPLATES[template].lower()
    return ReportDocument(
        title=f"{kind.capitalize()} job report",
        report_template=template,
        report_plan_name=plan_name,
        report_job_id=job_id,
        generated_at=now,
        columns=JOB_COLUMNS[template],
        rows=tuple(rows),
        summary={
            "Jobs": len(rows),
            **{f"{state.capitalize()}": count for state, count in sorted(counts.items())},
        },
        period_start=start,
        period_end=now,
        status_column="Status",
    )
