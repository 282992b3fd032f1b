"""The AWS Backup API driven by the unmodified boto3 client, on SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
from typing import Any

import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from e2e_helpers import REGION, ApiServer

from backvault.control.catalog.activity import JobType
from backvault.control.identity import create_access_key, create_user, put_user_policy
from backvault.control.job_engine import create_job

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"


def plan(name: str = "daily", vault: str = "main", schedule: str = "cron(0 5 ? * * *)") -> dict[str, Any]:
    """A one-rule backup plan document."""
    return {
        "BackupPlanName": name,
        "Rules": [{"RuleName": "nightly", "TargetBackupVaultName": vault, "ScheduleExpression": schedule}],
    }


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    """Return (code, HTTP status, message) of a ClientError as botocore parsed it."""
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


# --- vaults ----------------------------------------------------------------------------------------


def test_vault_create_describe_list_and_delete(api_server: ApiServer, backup_client: Any) -> None:
    created = backup_client.create_backup_vault(BackupVaultName="main", BackupVaultTags={"team": "ops"})
    assert created["BackupVaultArn"] == f"arn:aws:backup:{REGION}:000000000000:backup-vault:main"
    described = backup_client.describe_backup_vault(BackupVaultName="main")
    assert described["NumberOfRecoveryPoints"] == 0
    assert described["CreationDate"] == created["CreationDate"]
    assert described["Locked"] is False
    names = [vault["BackupVaultName"] for vault in backup_client.list_backup_vaults()["BackupVaultList"]]
    assert names == ["main"]

    with pytest.raises(ClientError) as excinfo:
        backup_client.create_backup_vault(BackupVaultName="main", CreatorRequestId="another-request")
    assert error_of(excinfo)[:2] == ("AlreadyExistsException", 400)
    assert excinfo.value.response["Arn"] == created["BackupVaultArn"]

    # A job writing into the vault keeps it from being deleted.
    with api_server.context.catalog.transaction() as session:
        job = create_job(session, api_server.context, JobType.BACKUP, vault_name="main")
        job_id = job.id
    with pytest.raises(ClientError) as excinfo:
        backup_client.delete_backup_vault(BackupVaultName="main")
    code, status, message = error_of(excinfo)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "job" in message
    with api_server.context.catalog.transaction() as session:
        from backvault.control.job_engine import request_stop

        request_stop(session, api_server.context, job_id)

    backup_client.delete_backup_vault(BackupVaultName="main")
    with pytest.raises(ClientError) as excinfo:
        backup_client.describe_backup_vault(BackupVaultName="main")
    assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 400)
    assert backup_client.list_backup_vaults()["BackupVaultList"] == []


def test_vault_settings_policy_notifications_and_lock(backup_client: Any) -> None:
    backup_client.create_backup_vault(BackupVaultName="main")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "backup:DeleteRecoveryPoint", "Resource": "*"}
        ],
    }
    backup_client.put_backup_vault_access_policy(BackupVaultName="main", Policy=json.dumps(policy))
    assert (
        json.loads(backup_client.get_backup_vault_access_policy(BackupVaultName="main")["Policy"]) == policy
    )
    backup_client.delete_backup_vault_access_policy(BackupVaultName="main")
    with pytest.raises(ClientError) as excinfo:
        backup_client.get_backup_vault_access_policy(BackupVaultName="main")
    assert error_of(excinfo)[0] == "ResourceNotFoundException"

    topic = "arn:aws:sns:local:000000000000:backups"
    backup_client.put_backup_vault_notifications(
        BackupVaultName="main", SNSTopicArn=topic, BackupVaultEvents=["BACKUP_JOB_COMPLETED"]
    )
    answer = backup_client.get_backup_vault_notifications(BackupVaultName="main")
    assert (answer["SNSTopicArn"], answer["BackupVaultEvents"]) == (topic, ["BACKUP_JOB_COMPLETED"])
    backup_client.delete_backup_vault_notifications(BackupVaultName="main")

    backup_client.put_backup_vault_lock_configuration(
        BackupVaultName="main", MinRetentionDays=7, MaxRetentionDays=30
    )
    described = backup_client.describe_backup_vault(BackupVaultName="main")
    assert (described["Locked"], described["MinRetentionDays"], described["MaxRetentionDays"]) == (
        True,
        7,
        30,
    )
    backup_client.delete_backup_vault_lock_configuration(BackupVaultName="main")
    assert backup_client.describe_backup_vault(BackupVaultName="main")["Locked"] is False


def test_invalid_values_are_refused_with_aws_errors(backup_client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        backup_client.create_backup_vault(BackupVaultName="no spaces allowed")
    code, status, message = error_of(excinfo)
    assert (code, status) == ("InvalidParameterValueException", 400)
    assert "'no spaces allowed'" in message
    backup_client.create_backup_vault(BackupVaultName="main")
    with pytest.raises(ClientError) as excinfo:
        backup_client.create_backup_plan(BackupPlan=plan(schedule="every day"))
    assert error_of(excinfo)[:2] == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as excinfo:
        backup_client.list_backup_vaults(NextToken="not-a-token")
    assert error_of(excinfo)[0] == "InvalidParameterValueException"
    with pytest.raises(ClientError) as excinfo:
        backup_client.get_backup_plan(BackupPlanId="no-such-plan")
    assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 400)


# --- plans and selections ---------------------------------------------------------------------------


def test_plan_versions_and_selections(backup_client: Any) -> None:
    backup_client.create_backup_vault(BackupVaultName="main")
    created = backup_client.create_backup_plan(BackupPlan=plan(), BackupPlanTags={"env": "test"})
    plan_id, first_version = created["BackupPlanId"], created["VersionId"]
    fetched = backup_client.get_backup_plan(BackupPlanId=plan_id)
    assert fetched["BackupPlan"]["Rules"][0]["ScheduleExpression"] == "cron(0 5 ? * * *)"
    rule_id = fetched["BackupPlan"]["Rules"][0]["RuleId"]

    updated = backup_client.update_backup_plan(
        BackupPlanId=plan_id, BackupPlan=plan(schedule="cron(0 6 ? * * *)")
    )
    assert updated["VersionId"] != first_version
    current = backup_client.get_backup_plan(BackupPlanId=plan_id)["BackupPlan"]["Rules"][0]
    assert (current["ScheduleExpression"], current["RuleId"]) == ("cron(0 6 ? * * *)", rule_id)
    old = backup_client.get_backup_plan(BackupPlanId=plan_id, VersionId=first_version)["BackupPlan"]
    assert old["Rules"][0]["ScheduleExpression"] == "cron(0 5 ? * * *)"
    versions = backup_client.list_backup_plan_versions(BackupPlanId=plan_id)["BackupPlanVersionsList"]
    assert [version["VersionId"] for version in versions] == [updated["VersionId"], first_version]
    listed = backup_client.list_backup_plans()["BackupPlansList"]
    assert [(item["BackupPlanId"], item["VersionId"]) for item in listed] == [(plan_id, updated["VersionId"])]

    template = backup_client.export_backup_plan_template(BackupPlanId=plan_id)["BackupPlanTemplateJson"]
    assert json.loads(template)["Rules"][0]["ScheduleExpression"] == "cron(0 6 ? * * *)"
    assert "RuleId" not in json.loads(template)["Rules"][0]
    from_json = backup_client.get_backup_plan_from_json(BackupPlanTemplateJson=template)["BackupPlan"]
    assert from_json["BackupPlanName"] == "daily"
    with pytest.raises(ClientError) as excinfo:
        backup_client.get_backup_plan_from_json(BackupPlanTemplateJson="{not json")
    assert error_of(excinfo)[0] == "InvalidParameterValueException"

    selection = {
        "SelectionName": "tagged",
        "IamRoleArn": ROLE,
        "ListOfTags": [
            {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
        ],
    }
    made = backup_client.create_backup_selection(BackupPlanId=plan_id, BackupSelection=selection)
    selection_id = made["SelectionId"]
    got = backup_client.get_backup_selection(BackupPlanId=plan_id, SelectionId=selection_id)
    assert got["BackupSelection"]["ListOfTags"] == selection["ListOfTags"]
    listed_selections = backup_client.list_backup_selections(BackupPlanId=plan_id)["BackupSelectionsList"]
    assert [(item["SelectionId"], item["SelectionName"]) for item in listed_selections] == [
        (selection_id, "tagged")
    ]

    with pytest.raises(ClientError) as excinfo:
        backup_client.delete_backup_plan(BackupPlanId=plan_id)
    assert error_of(excinfo)[0] == "InvalidRequestException"  # it still has a selection
    backup_client.delete_backup_selection(BackupPlanId=plan_id, SelectionId=selection_id)
    with pytest.raises(ClientError) as excinfo:
        backup_client.get_backup_selection(BackupPlanId=plan_id, SelectionId=selection_id)
    assert error_of(excinfo)[0] == "ResourceNotFoundException"
    deleted = backup_client.delete_backup_plan(BackupPlanId=plan_id)
    assert deleted["DeletionDate"] is not None
    assert backup_client.list_backup_plans()["BackupPlansList"] == []
    assert len(backup_client.list_backup_plans(IncludeDeleted=True)["BackupPlansList"]) == 1


def test_paginators_walk_every_page(backup_client: Any) -> None:
    names = [f"vault-{index}" for index in range(5)]
    for name in names:
        backup_client.create_backup_vault(BackupVaultName=name)
    pages = list(backup_client.get_paginator("list_backup_vaults").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(page["BackupVaultList"]) for page in pages] == [2, 2, 1]
    assert [vault["BackupVaultName"] for page in pages for vault in page["BackupVaultList"]] == names
    first = backup_client.list_backup_vaults(MaxResults=3)
    rest = backup_client.list_backup_vaults(MaxResults=3, NextToken=first["NextToken"])
    assert "NextToken" not in rest
    assert [vault["BackupVaultName"] for vault in first["BackupVaultList"] + rest["BackupVaultList"]] == names

    for index in range(3):
        backup_client.create_backup_plan(BackupPlan=plan(name=f"plan-{index}", vault="vault-0"))
    plan_pages = list(
        backup_client.get_paginator("list_backup_plans").paginate(PaginationConfig={"PageSize": 2})
    )
    assert [item["BackupPlanName"] for page in plan_pages for item in page["BackupPlansList"]] == [
        "plan-0",
        "plan-1",
        "plan-2",
    ]


def test_supported_resource_types(sqlite_server: ApiServer) -> None:
    types = sqlite_server.client().get_supported_resource_types()["ResourceTypes"]
    assert {"Filesystem", "PostgreSQL", "S3"} <= set(types)


# --- authentication and authorization (the catalog backend is not the subject: SQLite only) -----------


def test_unsigned_and_badly_signed_requests_are_refused(sqlite_server: ApiServer) -> None:
    anonymous = botocore.session.get_session().create_client(
        "backup",
        endpoint_url=sqlite_server.endpoint_url,
        region_name=REGION,
        config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as excinfo:
        anonymous.list_backup_vaults()
    assert error_of(excinfo)[:2] == ("MissingAuthenticationTokenException", 403)

    wrong_secret = sqlite_server.client(secret_access_key="x" * 40)
    with pytest.raises(ClientError) as excinfo:
        wrong_secret.list_backup_vaults()
    assert error_of(excinfo)[:2] == ("InvalidSignatureException", 403)

    unknown_key = sqlite_server.client(access_key_id="BVKUNKNOWNUNKNOWN000", secret_access_key="x" * 40)
    with pytest.raises(ClientError) as excinfo:
        unknown_key.list_backup_vaults()
    assert error_of(excinfo)[:2] == ("UnrecognizedClientException", 403)

    wrong_region = botocore.session.get_session().create_client(
        "backup",
        endpoint_url=sqlite_server.endpoint_url,
        region_name="elsewhere",
        aws_access_key_id=sqlite_server.access_key_id,
        aws_secret_access_key=sqlite_server.secret_access_key,
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as excinfo:
        wrong_region.list_backup_vaults()
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)
    # Nothing was created by any of them, and the real key still works.
    assert sqlite_server.client().list_backup_vaults()["BackupVaultList"] == []


def test_a_list_only_user_can_list_but_not_create(sqlite_server: ApiServer) -> None:
    context = sqlite_server.context
    create_user(context, "auditor")
    read_only = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "backup:List*", "Resource": "*"}],
    }
    put_user_policy(context, "auditor", "read-only", read_only)
    key = create_access_key(context, "auditor")["AccessKey"]
    auditor = sqlite_server.client(key["AccessKeyId"], key["SecretAccessKey"])
    sqlite_server.client().create_backup_vault(BackupVaultName="main")

    assert [vault["BackupVaultName"] for vault in auditor.list_backup_vaults()["BackupVaultList"]] == ["main"]
    with pytest.raises(ClientError) as excinfo:
        auditor.create_backup_vault(BackupVaultName="mine")
    code, status, message = error_of(excinfo)
    assert (code, status) == ("AccessDeniedException", 403)
    assert "backup:CreateBackupVault" in message
    with pytest.raises(ClientError) as excinfo:
        auditor.describe_backup_vault(BackupVaultName="main")
    assert error_of(excinfo)[0] == "AccessDeniedException"
    assert [vault["BackupVaultName"] for vault in auditor.list_backup_vaults()["BackupVaultList"]] == ["main"]


def test_a_vault_policy_deny_binds_even_the_admin(sqlite_server: ApiServer) -> None:
    admin = sqlite_server.client()
    admin.create_backup_vault(BackupVaultName="guarded")
    admin.create_backup_vault(BackupVaultName="other")
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "backup:DeleteBackupVault", "Resource": "*"}
        ],
    }
    admin.put_backup_vault_access_policy(BackupVaultName="guarded", Policy=json.dumps(deny))
    with pytest.raises(ClientError) as excinfo:
        admin.delete_backup_vault(BackupVaultName="guarded")
    code, status, message = error_of(excinfo)
    assert (code, status) == ("AccessDeniedException", 403)
    assert "vault's access policy" in message
    admin.delete_backup_vault(BackupVaultName="other")  # the policy binds its own vault only
    admin.describe_backup_vault(BackupVaultName="guarded")
    admin.delete_backup_vault_access_policy(BackupVaultName="guarded")
    admin.delete_backup_vault(BackupVaultName="guarded")
    assert admin.list_backup_vaults()["BackupVaultList"] == []


def test_policies_scoped_to_vault_arns(sqlite_server: ApiServer) -> None:
    context = sqlite_server.context
    create_user(context, "team-a")
    scoped = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["backup:DescribeBackupVault", "backup:PutBackupVaultNotifications"],
                "Resource": f"arn:aws:backup:{REGION}:000000000000:backup-vault:team-a-*",
            }
        ],
    }
    put_user_policy(context, "team-a", "own-vaults", scoped)
    key = create_access_key(context, "team-a")["AccessKey"]
    team = sqlite_server.client(key["AccessKeyId"], key["SecretAccessKey"])
    admin = sqlite_server.client()
    admin.create_backup_vault(BackupVaultName="team-a-photos")
    admin.create_backup_vault(BackupVaultName="team-b-photos")

    assert team.describe_backup_vault(BackupVaultName="team-a-photos")["BackupVaultName"] == "team-a-photos"
    with pytest.raises(ClientError) as excinfo:
        team.describe_backup_vault(BackupVaultName="team-b-photos")
    assert error_of(excinfo)[0] == "AccessDeniedException"
    assert "backup-vault:team-b-photos" in error_of(excinfo)[2]
    # A vault that does not exist is checked by the ARN it would have: still no leak of existence.
    with pytest.raises(ClientError) as excinfo:
        team.describe_backup_vault(BackupVaultName="team-b-missing")
    assert error_of(excinfo)[0] == "AccessDeniedException"
    with pytest.raises(ClientError) as excinfo:
        team.describe_backup_vault(BackupVaultName="team-a-missing")
    assert error_of(excinfo)[0] == "ResourceNotFoundException"


def test_tags_and_legal_holds(backup_client: Any) -> None:
    vault_arn = backup_client.create_backup_vault(BackupVaultName="main")["BackupVaultArn"]
    backup_client.tag_resource(ResourceArn=vault_arn, Tags={"team": "ops", "tier": "gold"})
    backup_client.untag_resource(ResourceArn=vault_arn, TagKeyList=["tier"])
    assert backup_client.list_tags(ResourceArn=vault_arn)["Tags"] == {"team": "ops"}

    hold = backup_client.create_legal_hold(
        Title="audit-2025",
        Description="keep everything in main",
        RecoveryPointSelection={"VaultNames": ["main"]},
    )
    hold_id = hold["LegalHoldId"]
    assert backup_client.get_legal_hold(LegalHoldId=hold_id)["Status"] == "ACTIVE"
    assert [item["LegalHoldId"] for item in backup_client.list_legal_holds()["LegalHolds"]] == [hold_id]
    assert backup_client.list_recovery_points_by_legal_hold(LegalHoldId=hold_id)["RecoveryPoints"] == []
    backup_client.cancel_legal_hold(LegalHoldId=hold_id, CancelDescription="audit closed")
    assert backup_client.get_legal_hold(LegalHoldId=hold_id)["Status"] in ("CANCELING", "CANCELED")
