"""Acceptance: a real backup and restore driven through the AWS Backup API with boto3.

A vault, a plan and a tag selection are created with boto3; a directory endpoint is registered and
discovered through the /backvault extension; a backup job is started with boto3 and run by a worker;
the recovery point is listed and restored with boto3, and the restored bytes are compared with the
source. Finally the vault gets a compliance-mode lock that is already immutable, and deleting the
point is refused with AWS's error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from e2e_helpers import ApiServer

from backvault.control.context import ServiceContext
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.worker import Worker

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
MAX_WORKER_ROUNDS = 20


def tree_digest(root: Path) -> dict[str, str]:
    """Map every file below root (relative path) to the SHA-256 of its bytes."""
    digests = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_until(context: ServiceContext, done: Any) -> None:
    """Let a worker run due jobs until ``done()`` is true."""
    worker = Worker(context, lease_seconds=60, poll_seconds=0.1)
    for _ in range(MAX_WORKER_ROUNDS):
        if done():
            return
        worker.run_once()
    assert done(), "the job did not finish"


def test_backup_restore_and_a_locked_point_through_the_api(api_server: ApiServer, tmp_path: Path) -> None:
    client = api_server.client()
    source = tmp_path / "shares" / "photos"
    (source / "2024").mkdir(parents=True)
    (source / ".backvault-tags").write_text("backup = daily\n")
    (source / "2024" / "beach.raw").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (source / "notes.txt").write_text("sand everywhere\n")
    (source / "empty").write_bytes(b"")

    client.create_backup_vault(BackupVaultName="main")
    plan = client.create_backup_plan(
        BackupPlan={
            "BackupPlanName": "daily",
            "Rules": [
                {
                    "RuleName": "nightly",
                    "TargetBackupVaultName": "main",
                    "ScheduleExpression": "cron(0 5 ? * * *)",
                }
            ],
        }
    )
    client.create_backup_selection(
        BackupPlanId=plan["BackupPlanId"],
        BackupSelection={
            "SelectionName": "daily-tagged",
            "IamRoleArn": ROLE,
            "ListOfTags": [
                {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
            ],
        },
    )
    endpoint = {
        "EndpointName": "nas",
        "EndpointType": "Filesystem",
        "Connection": {"root": str(tmp_path / "shares")},
    }
    assert api_server.request("POST", "/backvault/endpoints", json_body=endpoint).status_code == 200
    assert api_server.request("POST", "/backvault/endpoints/nas/discover").status_code == 200
    resources = api_server.request("GET", "/backvault/resources").json()["Resources"]
    (photos,) = [item for item in resources if item["ResourceName"] == "photos"]
    assert photos["NativeTags"] == {"backup": "daily"}

    started = client.start_backup_job(
        BackupVaultName="main",
        ResourceArn=photos["ResourceArn"],
        IamRoleArn=ROLE,
        Lifecycle={"DeleteAfterDays": 30},
    )
    job_id = started["BackupJobId"]
    run_until(
        api_server.context,
        lambda: (
            client.describe_backup_job(BackupJobId=job_id)["State"]
            in ("COMPLETED", "FAILED", "ABORTED", "PARTIAL")
        ),
    )
    job = client.describe_backup_job(BackupJobId=job_id)
    assert job["State"] == "COMPLETED", job.get("StatusMessage")
    assert [item["BackupJobId"] for item in client.list_backup_jobs(ByState="COMPLETED")["BackupJobs"]] == [
        job_id
    ]
    hour_ago, in_an_hour = job["CreationDate"] - timedelta(hours=1), job["CreationDate"] + timedelta(hours=1)
    after = client.list_backup_jobs(ByCreatedAfter=hour_ago, ByResourceType="Filesystem")["BackupJobs"]
    assert [item["BackupJobId"] for item in after] == [job_id]
    assert client.list_backup_jobs(ByCreatedAfter=in_an_hour)["BackupJobs"] == []

    points = client.list_recovery_points_by_backup_vault(BackupVaultName="main")["RecoveryPoints"]
    assert [(point["ResourceArn"], point["Status"]) for point in points] == [
        (photos["ResourceArn"], "COMPLETED")
    ]
    point_arn = points[0]["RecoveryPointArn"]
    by_resource = client.list_recovery_points_by_resource(ResourceArn=photos["ResourceArn"])["RecoveryPoints"]
    assert [point["RecoveryPointArn"] for point in by_resource] == [point_arn]
    described = client.describe_recovery_point(BackupVaultName="main", RecoveryPointArn=point_arn)
    assert described["Lifecycle"] == {"DeleteAfterDays": 30}
    assert described["BackupSizeInBytes"] > 3 * 1024 * 1024
    assert (
        client.describe_protected_resource(ResourceArn=photos["ResourceArn"])["LastRecoveryPointArn"]
        == point_arn
    )

    target = tmp_path / "restored"
    restore = client.start_restore_job(
        RecoveryPointArn=point_arn, Metadata={"TargetPath": str(target)}, IamRoleArn=ROLE
    )
    restore_id = restore["RestoreJobId"]
    run_until(
        api_server.context,
        lambda: (
            client.describe_restore_job(RestoreJobId=restore_id)["Status"]
            in ("COMPLETED", "FAILED", "ABORTED")
        ),
    )
    restored = client.describe_restore_job(RestoreJobId=restore_id)
    assert restored["Status"] == "COMPLETED", restored.get("StatusMessage")
    assert tree_digest(target) == tree_digest(source)
    assert (target / "2024" / "beach.raw").read_bytes() == (source / "2024" / "beach.raw").read_bytes()

    # A compliance-mode lock set three days ago is immutable now (the server keeps the real clock,
    # which SigV4 needs, so the lock is put with a context whose clock is three days behind).
    real = api_server.context
    earlier = dataclasses.replace(real, clock=lambda: real.now() - timedelta(days=3, minutes=1))
    put_backup_vault_lock_configuration(
        earlier, "main", min_retention_days=7, max_retention_days=60, changeable_for_days=3
    )
    assert client.describe_backup_vault(BackupVaultName="main")["Locked"] is True
    with pytest.raises(ClientError) as excinfo:
        client.delete_recovery_point(BackupVaultName="main", RecoveryPointArn=point_arn)
    error = excinfo.value.response["Error"]
    assert (error["Code"], excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "InvalidRequestException",
        400,
    )
    assert "Vault Lock" in error["Message"]
    with pytest.raises(ClientError) as excinfo:
        client.delete_backup_vault_lock_configuration(BackupVaultName="main")
    assert "immutable" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:
        client.delete_backup_vault(BackupVaultName="main")
    assert excinfo.value.response["Error"]["Code"] == "InvalidRequestException"
    assert [
        point["RecoveryPointArn"]
        for point in client.list_recovery_points_by_backup_vault(BackupVaultName="main")["RecoveryPoints"]
    ] == [point_arn]
