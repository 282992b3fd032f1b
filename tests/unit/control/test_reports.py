"""Report plans and report jobs: CSV, JSON and HTML reports written into a storage location."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from control_helpers import FakeClock, plan_document, selection_document
from sqlalchemy import select
from test_frameworks import FILES, PROTECTED, add_resource, protect_tagged

from backvault.control.catalog import Event, Job
from backvault.control.catalog.audit_models import ReportJob
from backvault.control.context import ServiceContext
from backvault.control.frameworks import create_framework, delete_framework
from backvault.control.locations import create_storage_location, delete_storage_location
from backvault.control.plans import create_backup_plan
from backvault.control.reports import (
    create_report_plan,
    delete_report_plan,
    describe_report_job,
    describe_report_plan,
    list_report_jobs,
    list_report_plans,
    start_report_job,
    update_report_plan,
)
from backvault.control.selections import create_backup_selection
from backvault.domain.arn import BackupArnKind, parse_backup_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    ConflictException,
    InvalidParameterValueException,
    ResourceNotFoundException,
)

BOTH = {"S3BucketName": "local", "S3KeyPrefix": "audit", "Formats": ["CSV", "JSON"]}


def location_dir(data_dir: Path) -> Path:
    """The default location's directory (the context fixture puts it there)."""
    return data_dir / "vaults"


def written(context: ServiceContext, data_dir: Path, job_id: str) -> dict[str, bytes]:
    """Check the job completed and return its objects' contents by file extension."""
    job = describe_report_job(context, job_id)["ReportJob"]
    assert job["Status"] == "COMPLETED", job.get("StatusMessage")
    destination = job["ReportDestination"]
    assert destination["S3BucketName"] == "local"
    contents = {}
    for key in destination["S3Keys"]:
        assert key.startswith("backvault.reports/audit/Backup/000000000000/local/")
        contents[key.rsplit(".", 1)[1]] = (location_dir(data_dir) / key).read_bytes()
    return contents


def csv_rows(data: bytes) -> list[dict[str, str]]:
    """Parse a CSV report."""
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def add_job(
    context: ServiceContext, job_type: str, state: str, resource_arn: str, age: timedelta, **members: Any
) -> str:
    """Record a job as the job engine would and return its id."""
    job_id = str(uuid.uuid4())
    with context.catalog.transaction() as session:
        session.add(
            Job(
                id=job_id,
                job_type=job_type,
                state=state,
                resource_arn=resource_arn,
                resource_type="Filesystem",
                vault_name="main",
                creation_date=context.now() - age,
                **members,
            )
        )
    return job_id


def test_report_plan_crud_and_validation(context: ServiceContext) -> None:
    framework = create_framework(context, "Coverage", [PROTECTED])["FrameworkArn"]
    setting = {"ReportTemplate": "RESOURCE_COMPLIANCE_REPORT", "FrameworkArns": [framework]}
    created = create_report_plan(
        context, "Weekly", {"S3BucketName": "local"}, setting, report_plan_description="for auditors"
    )
    assert parse_backup_arn(created["ReportPlanArn"], BackupArnKind.REPORT_PLAN).identifier == "Weekly"
    assert created["CreationTime"] == context.now()
    plan = describe_report_plan(context, "Weekly")["ReportPlan"]
    assert plan["ReportDeliveryChannel"] == {"S3BucketName": "local", "Formats": ["CSV"]}
    assert plan["ReportSetting"] == {**setting, "NumberOfFrameworks": 1}
    assert plan["DeploymentStatus"] == "COMPLETED" and plan["ReportPlanDescription"] == "for auditors"
    assert "LastAttemptedExecutionTime" not in plan
    with pytest.raises(AlreadyExistsException):
        create_report_plan(context, "Weekly", {"S3BucketName": "local"}, setting)
    # a report plan that uses a framework keeps it from being deleted
    with pytest.raises(ConflictException, match="Weekly"):
        delete_framework(context, "Coverage")

    update_report_plan(
        context,
        "Weekly",
        report_delivery_channel=BOTH,
        report_setting={"ReportTemplate": "BACKUP_JOB_REPORT", "Regions": ["local"]},
    )
    plan = describe_report_plan(context, "Weekly")["ReportPlan"]
    assert plan["ReportDeliveryChannel"] == BOTH
    assert plan["ReportSetting"] == {"ReportTemplate": "BACKUP_JOB_REPORT", "Regions": ["local"]}
    assert [item["ReportPlanName"] for item in list_report_plans(context)["ReportPlans"]] == ["Weekly"]
    delete_framework(context, "Coverage")  # no longer used

    bad: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        (
            {"S3BucketName": "my-bucket"},
            {"ReportTemplate": "BACKUP_JOB_REPORT"},
            "not a storage location.*local",
        ),
        ({"S3BucketName": "local", "Formats": ["PDF"]}, {"ReportTemplate": "BACKUP_JOB_REPORT"}, "Formats"),
        (
            {"S3BucketName": "local", "S3KeyPrefix": "a/../b"},
            {"ReportTemplate": "BACKUP_JOB_REPORT"},
            "Prefix",
        ),
        ({"S3BucketName": "local"}, {"ReportTemplate": "SCAN_JOB_REPORT"}, "SCAN_JOB_REPORT.*not supported"),
        (
            {"S3BucketName": "local"},
            {"ReportTemplate": "CONTROL_COMPLIANCE_REPORT"},
            "FrameworkArns is required",
        ),
        (
            {"S3BucketName": "local"},
            {"ReportTemplate": "CONTROL_COMPLIANCE_REPORT", "FrameworkArns": [framework]},
            "no framework has the ARN",
        ),
        (
            {"S3BucketName": "local"},
            {"ReportTemplate": "BACKUP_JOB_REPORT", "Accounts": ["12"]},
            "not an account id",
        ),
    ]
    for channel, report_setting, message in bad:
        with pytest.raises(InvalidParameterValueException, match=message):
            create_report_plan(context, "Broken", channel, report_setting)
    assert [item["ReportPlanName"] for item in list_report_plans(context)["ReportPlans"]] == ["Weekly"]

    delete_report_plan(context, "Weekly")
    with pytest.raises(ResourceNotFoundException, match="Weekly"):
        describe_report_plan(context, "Weekly")
    with pytest.raises(ResourceNotFoundException):
        start_report_job(context, "Weekly")


def test_resource_and_control_compliance_reports(
    context: ServiceContext, clock: FakeClock, data_dir: Path
) -> None:
    protect_tagged(context)
    covered = add_resource(context, "covered", {"backup": "daily"})
    framework = create_framework(context, "Coverage", [PROTECTED])["FrameworkArn"]
    # added after the framework's evaluation, with no event: the report must still see it
    uncovered = add_resource(context, "<b>uncovered</b>", {})
    setting = {"ReportTemplate": "RESOURCE_COMPLIANCE_REPORT", "FrameworkArns": [framework]}
    create_report_plan(context, "Resources", BOTH, setting)
    clock.advance(timedelta(minutes=1))

    job_id = start_report_job(context, "Resources")["ReportJobId"]
    files = written(context, data_dir, job_id)
    assert set(files) == {"csv", "json", "html"}
    rows = {row["ResourceArn"]: row for row in csv_rows(files["csv"])}
    assert rows[uncovered]["ComplianceStatus"] == "NON_COMPLIANT"
    assert "no backup plan selects this resource" in rows[uncovered]["Reasons"]
    assert rows[uncovered]["NonCompliantControls"] == PROTECTED["ControlName"]
    assert rows[covered]["ComplianceStatus"] == "COMPLIANT"
    document = json.loads(files["json"])
    assert document["ReportTemplate"] == "RESOURCE_COMPLIANCE_REPORT" and document["ReportJobId"] == job_id
    assert document["Summary"]["Non-compliant"] == 1 and document["Summary"]["Compliant"] == 1
    assert {row["ResourceArn"]: row["ComplianceStatus"] for row in document["Rows"]} == {
        covered: "COMPLIANT",
        uncovered: "NON_COMPLIANT",
    }
    page = files["html"].decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "NON_COMPLIANT" in page
    assert "&lt;b&gt;uncovered&lt;/b&gt;" in page and "<b>uncovered" not in page
    assert "http" not in page  # self-contained: nothing is loaded from anywhere

    plan = describe_report_plan(context, "Resources")["ReportPlan"]
    assert plan["LastSuccessfulExecutionTime"] == plan["LastAttemptedExecutionTime"] == context.now()

    # protect it and the next report says so; the control report counts per control
    create_backup_selection(
        context,
        create_backup_plan(context, plan_document(name="all", ScheduleExpression="rate(1 hour)"))[
            "BackupPlanId"
        ],
        selection_document(name="everything", ListOfTags=[], Resources=[FILES.format("*")]),
    )
    update_report_plan(
        context,
        "Resources",
        report_setting={"ReportTemplate": "CONTROL_COMPLIANCE_REPORT", "FrameworkArns": [framework]},
    )
    clock.advance(timedelta(minutes=1))
    control_job = start_report_job(context, "Resources")["ReportJobId"]
    [row] = csv_rows(written(context, data_dir, control_job)["csv"])
    assert row["ControlName"] == PROTECTED["ControlName"] and row["ComplianceStatus"] == "COMPLIANT"
    assert (row["ResourcesEvaluated"], row["NonCompliantResources"]) == ("2", "0")


def test_job_reports_list_the_last_day_of_jobs(context: ServiceContext, data_dir: Path) -> None:
    resource = FILES.format("data")
    done = add_job(context, "BACKUP", "COMPLETED", resource, timedelta(hours=2), backup_size_in_bytes=4096)
    failed = add_job(
        context, "BACKUP", "FAILED", resource, timedelta(hours=1), status_message='=HYPERLINK("x")'
    )
    add_job(context, "BACKUP", "COMPLETED", resource, timedelta(hours=30))  # older than a day
    copied = add_job(
        context,
        "COPY",
        "COMPLETED",
        resource,
        timedelta(hours=3),
        destination_vault_arn="arn:aws:backup:other:000000000000:backup-vault:far",
    )
    create_report_plan(context, "Backups", BOTH, {"ReportTemplate": "BACKUP_JOB_REPORT"})
    create_report_plan(context, "Copies", BOTH, {"ReportTemplate": "COPY_JOB_REPORT"})
    create_report_plan(
        context, "Elsewhere", BOTH, {"ReportTemplate": "BACKUP_JOB_REPORT", "Regions": ["other"]}
    )

    files = written(context, data_dir, start_report_job(context, "Backups")["ReportJobId"])
    rows = csv_rows(files["csv"])
    assert [(row["JobId"], row["Status"]) for row in rows] == [(done, "COMPLETED"), (failed, "FAILED")]
    assert rows[0]["BackupSizeInBytes"] == "4096" and rows[0]["Region"] == "local"
    # a cell a spreadsheet would run as a formula is defused
    assert rows[1]["StatusMessage"] == '\'=HYPERLINK("x")'
    document = json.loads(files["json"])
    assert document["Summary"] == {"Jobs": 2, "Completed": 1, "Failed": 1}
    assert (
        document["PeriodStart"] == "2025-04-30T12:00:00Z" and document["PeriodEnd"] == "2025-05-01T12:00:00Z"
    )
    assert failed in files["html"].decode("utf-8")

    copy_rows = csv_rows(
        written(context, data_dir, start_report_job(context, "Copies")["ReportJobId"])["csv"]
    )
    assert [(row["JobId"], row["DestinationBackupVaultArn"]) for row in copy_rows] == [
        (copied, "arn:aws:backup:other:000000000000:backup-vault:far")
    ]
    elsewhere = written(context, data_dir, start_report_job(context, "Elsewhere")["ReportJobId"])
    assert csv_rows(elsewhere["csv"]) == []
    assert "Nothing to report" in elsewhere["html"].decode("utf-8")


def test_report_jobs_are_listed_filtered_and_fail_clearly(context: ServiceContext, clock: FakeClock) -> None:
    create_report_plan(context, "Backups", BOTH, {"ReportTemplate": "BACKUP_JOB_REPORT"})
    create_report_plan(
        context, "Restores", {"S3BucketName": "local"}, {"ReportTemplate": "RESTORE_JOB_REPORT"}
    )
    first = start_report_job(context, "Backups", idempotency_token="once")["ReportJobId"]
    assert start_report_job(context, "Backups", idempotency_token="once")["ReportJobId"] == first
    clock.advance(timedelta(minutes=1))
    second = start_report_job(context, "Restores")["ReportJobId"]
    restore_job = describe_report_job(context, second)["ReportJob"]
    assert [key.rsplit(".", 1)[1] for key in restore_job["ReportDestination"]["S3Keys"]] == ["csv", "html"]
    assert restore_job["ReportTemplate"] == "RESTORE_JOB_REPORT"

    # the location the plan writes to disappears: the job fails and says why
    delete_storage_location(context, "local")
    clock.advance(timedelta(minutes=1))
    failed = start_report_job(context, "Backups")["ReportJobId"]
    job = describe_report_job(context, failed)["ReportJob"]
    assert job["Status"] == "FAILED" and "local" in job["StatusMessage"]
    assert "ReportDestination" not in job and job["CompletionTime"] == context.now()
    with context.catalog.transaction() as session:
        [event] = session.scalars(select(Event).where(Event.event_type == "AUDIT_REPORT_JOB_FAILED"))
        assert event.detail["ReportJobId"] == failed and event.detail["StatusMessage"] == job["StatusMessage"]
    plan = describe_report_plan(context, "Backups")["ReportPlan"]
    assert plan["LastAttemptedExecutionTime"] == context.now()
    assert plan["LastSuccessfulExecutionTime"] < context.now()

    def ids(**filters: Any) -> list[str]:
        return [item["ReportJobId"] for item in list_report_jobs(context, **filters)["ReportJobs"]]

    assert ids() == [failed, second, first]  # newest first
    assert ids(by_report_plan_name="Backups") == [failed, first]
    assert ids(by_status="FAILED") == [failed]
    assert ids(by_creation_after=context.now() - timedelta(seconds=90)) == [failed, second]
    assert ids(by_creation_before=context.now() - timedelta(seconds=30)) == [second, first]
    page = list_report_jobs(context, max_results=2)
    assert [item["ReportJobId"] for item in page["ReportJobs"]] == [failed, second]
    assert ids(next_token=page["NextToken"]) == [first]
    with pytest.raises(InvalidParameterValueException, match="ByStatus"):
        list_report_jobs(context, by_status="DONE")
    with pytest.raises(ResourceNotFoundException):
        describe_report_job(context, "no-such-job")
    # report jobs outlive their plan
    delete_report_plan(context, "Backups")
    assert describe_report_job(context, first)["ReportJob"]["Status"] == "COMPLETED"
    with context.catalog.transaction() as session:
        assert len(list(session.scalars(select(ReportJob)))) == 3


def test_reports_on_an_s3_location(context: ServiceContext, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    create_storage_location(context, "offsite", "s3", bucket=bucket, prefix="team", endpoint_url=endpoint)
    add_resource(context, "orphan", {})
    framework = create_framework(context, "Coverage", [PROTECTED])["FrameworkArn"]
    create_report_plan(
        context,
        "Offsite",
        {"S3BucketName": "offsite", "Formats": ["JSON"]},
        {"ReportTemplate": "RESOURCE_COMPLIANCE_REPORT", "FrameworkArns": [framework]},
    )
    job = describe_report_job(context, start_report_job(context, "Offsite")["ReportJobId"])["ReportJob"]
    assert job["Status"] == "COMPLETED", job.get("StatusMessage")
    keys = job["ReportDestination"]["S3Keys"]
    assert job["ReportDestination"]["S3BucketName"] == "offsite"
    assert all(key.startswith("team/backvault.reports/Backup/") for key in keys)
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        stored = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert stored == set(keys)
        body = client.get_object(Bucket=bucket, Key=next(key for key in keys if key.endswith(".json")))
        rows = json.loads(body["Body"].read())["Rows"]
    finally:
        client.close()
    assert [(row["ResourceArn"], row["ComplianceStatus"]) for row in rows] == [
        (FILES.format("orphan"), "NON_COMPLIANT")
    ]


def test_a_report_time_window_is_exact(context: ServiceContext, data_dir: Path) -> None:
    resource = FILES.format("edge")
    inside = add_job(context, "RESTORE", "COMPLETED", resource, timedelta(hours=24))
    add_job(context, "RESTORE", "COMPLETED", resource, timedelta(hours=24, seconds=1))
    create_report_plan(context, "Restores", BOTH, {"ReportTemplate": "RESTORE_JOB_REPORT"})
    rows = csv_rows(written(context, data_dir, start_report_job(context, "Restores")["ReportJobId"])["csv"])
    assert [row["JobId"] for row in rows] == [inside]
