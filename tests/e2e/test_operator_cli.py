"""The operator CLI against a real API server (uvicorn on 127.0.0.1) through real boto3 and SigV4.

Profiles are written with ``backvault configure`` into a temporary XDG_CONFIG_HOME; commands run
in-process through Typer's CliRunner, so their output, JSON and exit codes are what an operator sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import ApiServer, free_port
from operator_fixtures import OperatorCli, operator_cli, worker_thread

from backvault.cli.client_config import ConfigError, load_profiles, resolve_profile, save_profile

__all__ = ["operator_cli"]  # the fixture, imported so pytest finds it here

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"


def tree_digest(root: Path) -> dict[str, str]:
    """Map every file below root (relative path) to the SHA-256 of its bytes."""
    digests = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def configure_admin(cli: OperatorCli, server: ApiServer, *extra: str) -> None:
    """Write a profile holding the server's admin key."""
    cli.configure(server.endpoint_url, server.access_key_id, server.secret_access_key, *extra)


# --- profiles ------------------------------------------------------------------------------------


def test_configure_writes_a_private_profile_and_vault_commands_work(
    operator_cli: OperatorCli, api_server: ApiServer
) -> None:
    result = operator_cli.configure(
        api_server.endpoint_url, api_server.access_key_id, api_server.secret_access_key
    )
    assert api_server.secret_access_key not in result.output
    assert stat.S_IMODE(operator_cli.config_file.stat().st_mode) == 0o600
    stored = load_profiles(operator_cli.config_file)["default"]
    assert stored == {
        "endpoint_url": api_server.endpoint_url,
        "region": "local",
        "access_key_id": api_server.access_key_id,
        "secret_access_key": api_server.secret_access_key,
    }
    listed = operator_cli.run("configure", "--list").stdout
    assert api_server.access_key_id in listed and api_server.secret_access_key not in listed

    assert operator_cli.json("vaults", "list") == {"BackupVaultList": []}
    created = operator_cli.run("vaults", "create", "main", "--tag", "team=ops").stdout
    assert "created vault main" in created
    operator_cli.run("vaults", "create", "second")
    table = operator_cli.run("vaults", "list").stdout
    assert "main" in table and "second" in table and "RecoveryPoints" in table
    vaults = operator_cli.json("vaults", "list")["BackupVaultList"]
    assert sorted(vault["BackupVaultName"] for vault in vaults) == ["main", "second"]
    described = operator_cli.json("vaults", "describe", "main")
    assert described["BackupVaultName"] == "main"
    assert described["NumberOfRecoveryPoints"] == 0
    assert described["BackupVaultArn"].endswith(":backup-vault:main")
    assert api_server.client().list_tags(ResourceArn=described["BackupVaultArn"])["Tags"] == {"team": "ops"}

    operator_cli.run("vaults", "delete", "second")
    assert [vault["BackupVaultName"] for vault in operator_cli.json("vaults", "list")["BackupVaultList"]] == [
        "main"
    ]
    missing = operator_cli.run("vaults", "describe", "second", expect=1)
    assert "ResourceNotFoundException" in missing.stderr and "second" in missing.stderr
    duplicate = operator_cli.run("vaults", "create", "main", expect=1)
    assert "AlreadyExistsException" in duplicate.stderr


def test_a_bad_secret_is_refused_with_a_clear_403(
    operator_cli: OperatorCli, sqlite_server: ApiServer
) -> None:
    wrong = "x" * len(sqlite_server.secret_access_key)
    operator_cli.configure(sqlite_server.endpoint_url, sqlite_server.access_key_id, wrong)
    result = operator_cli.run("vaults", "list", expect=1)
    assert "HTTP 403" in result.stderr
    assert "InvalidSignatureException" in result.stderr or "UnrecognizedClientException" in result.stderr
    assert wrong not in result.output and sqlite_server.secret_access_key not in result.output
    as_json = operator_cli.run("vaults", "list", "--json", expect=1)
    assert as_json.stdout == "" and "HTTP 403" in as_json.stderr  # errors go to stderr, JSON or not
    # The same refusal for the extension routes, which are signed by hand rather than by boto3.
    extension = operator_cli.run("endpoints", "list", expect=1)
    assert "HTTP 403" in extension.stderr


def test_environment_and_options_override_the_profile(
    operator_cli: OperatorCli, sqlite_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # A profile whose endpoint answers nothing and whose secret is wrong.
    operator_cli.configure(dead, sqlite_server.access_key_id, "not-the-secret")
    unreachable = operator_cli.run("vaults", "list", expect=1)
    assert "ConnectionError" in unreachable.stderr and dead in unreachable.stderr

    monkeypatch.setenv("BACKVAULT_ENDPOINT_URL", sqlite_server.endpoint_url)
    assert "HTTP 403" in operator_cli.run("vaults", "list", expect=1).stderr  # right server, wrong secret
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sqlite_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sqlite_server.secret_access_key)
    assert operator_cli.json("vaults", "list") == {"BackupVaultList": []}
    # An explicit --profile uses that profile's key, as the AWS CLI does.
    assert "HTTP 403" in operator_cli.run("vaults", "list", "--profile", "default", expect=1).stderr
    monkeypatch.setenv("BACKVAULT_ACCESS_KEY_ID", sqlite_server.access_key_id)
    monkeypatch.setenv("BACKVAULT_SECRET_ACCESS_KEY", sqlite_server.secret_access_key)
    assert operator_cli.json("vaults", "list", "--profile", "default") == {"BackupVaultList": []}
    monkeypatch.delenv("BACKVAULT_SECRET_ACCESS_KEY")
    half = operator_cli.run("vaults", "list", expect=1)
    assert "BACKVAULT_ACCESS_KEY_ID is set but BACKVAULT_SECRET_ACCESS_KEY is not" in half.stderr
    for variable in (
        "BACKVAULT_ACCESS_KEY_ID",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "BACKVAULT_ENDPOINT_URL",
    ):
        monkeypatch.delenv(variable)

    # A second profile chosen by BACKVAULT_PROFILE or --profile; --endpoint-url beats everything.
    operator_cli.configure(
        dead, sqlite_server.access_key_id, sqlite_server.secret_access_key, "--profile", "lab"
    )
    # Reconfiguring without a secret on standard input keeps the stored one.
    operator_cli.run("configure", "--profile", "lab", "--endpoint-url", sqlite_server.endpoint_url, input="")
    assert (
        load_profiles(operator_cli.config_file)["lab"]["secret_access_key"] == sqlite_server.secret_access_key
    )
    monkeypatch.setenv("BACKVAULT_PROFILE", "lab")
    operator_cli.run("vaults", "create", "from-env-profile")
    monkeypatch.delenv("BACKVAULT_PROFILE")
    assert "ConnectionError" in operator_cli.run("vaults", "list", expect=1).stderr  # back to "default"
    listed = operator_cli.json("vaults", "list", "--profile", "lab")["BackupVaultList"]
    assert [vault["BackupVaultName"] for vault in listed] == ["from-env-profile"]
    assert "ConnectionError" in (
        operator_cli.run("vaults", "list", "--profile", "lab", "--endpoint-url", dead, expect=1).stderr
    )
    missing = operator_cli.run("vaults", "list", "--profile", "nope", expect=1)
    assert "profile 'nope' is not in" in missing.stderr and "default, lab" in missing.stderr


def test_profile_resolution_without_a_server(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    tricky = 'se"cr\\et\tvalue'
    save_profile(
        "default",
        {"endpoint_url": "http://127.0.0.1:9/", "access_key_id": "BVAKEXAMPLE", "secret_access_key": tricky},
        path,
    )
    profile = resolve_profile(environ={}, path=path)
    assert (profile.endpoint_url, profile.region, profile.secret_access_key) == (
        "http://127.0.0.1:9",
        "local",
        tricky,
    )
    assert tricky not in repr(profile)
    with pytest.raises(ConfigError, match="no API endpoint"):
        resolve_profile(environ={}, path=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid"):
        resolve_profile(endpoint_option="ftp://example", environ={}, path=path)
    with pytest.raises(ConfigError, match="no access key"):
        resolve_profile(endpoint_option="http://127.0.0.1:9", environ={}, path=tmp_path / "absent.toml")
    path.write_text("[profiles.default\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_profile(environ={}, path=path)


def test_no_profile_at_all_says_what_to_do(operator_cli: OperatorCli) -> None:
    result = operator_cli.run("vaults", "list", expect=1)
    assert "backvault configure" in result.stderr and "BACKVAULT_ENDPOINT_URL" in result.stderr


# --- plans and selections --------------------------------------------------------------------------


def test_plans_and_selections_from_json_files(
    operator_cli: OperatorCli, sqlite_server: ApiServer, tmp_path: Path
) -> None:
    configure_admin(operator_cli, sqlite_server)
    operator_cli.run("vaults", "create", "main")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
                "BackupPlan": {
                    "BackupPlanName": "daily",
                    "Rules": [
                        {
                            "RuleName": "nightly",
                            "TargetBackupVaultName": "main",
                            "ScheduleExpression": "cron(0 5 ? * * *)",
                            "Lifecycle": {"DeleteAfterDays": 35},
                        }
                    ],
                },
                "BackupPlanTags": {"owner": "ops"},
            }
        )
    )
    created = operator_cli.json("plans", "create", "-f", str(plan_file))
    plan_id = created["BackupPlanId"]
    assert created["VersionId"]
    listed = operator_cli.json("plans", "list")["BackupPlansList"]
    assert [(plan["BackupPlanId"], plan["BackupPlanName"]) for plan in listed] == [(plan_id, "daily")]
    shown = operator_cli.run("plans", "get", plan_id).stdout
    assert "nightly" in shown and "cron(0 5 ? * * *)" in shown and "DeleteAfterDays=35" in shown
    plan = operator_cli.json("plans", "get", plan_id)["BackupPlan"]
    assert plan["Rules"][0]["Lifecycle"] == {"DeleteAfterDays": 35}

    # A bare plan document (no "BackupPlan" wrapper) from standard input updates the plan.
    bare = {**plan, "Rules": [{**plan["Rules"][0], "Lifecycle": {"DeleteAfterDays": 90}}]}
    bare["Rules"][0].pop("RuleId", None)
    updated = operator_cli.run("plans", "update", plan_id, "-f", "-", input=json.dumps(bare))
    assert "VersionId" in updated.stdout
    assert operator_cli.json("plans", "get", plan_id)["BackupPlan"]["Rules"][0]["Lifecycle"] == {
        "DeleteAfterDays": 90
    }

    selection_file = tmp_path / "selection.json"
    selection_file.write_text(
        json.dumps(
            {
                "SelectionName": "tagged",
                "ListOfTags": [
                    {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
                ],
            }
        )
    )
    selection_id = operator_cli.json("selections", "create", plan_id, "-f", str(selection_file))[
        "SelectionId"
    ]
    selections = operator_cli.json("selections", "list", plan_id)["BackupSelectionsList"]
    assert [(item["SelectionId"], item["SelectionName"]) for item in selections] == [(selection_id, "tagged")]
    selection = operator_cli.json("selections", "get", plan_id, selection_id)["BackupSelection"]
    assert selection["IamRoleArn"] == ROLE  # filled in with the default role of the plan's account
    assert "tagged" in operator_cli.run("selections", "list", plan_id).stdout

    refused = operator_cli.run("plans", "delete", plan_id, expect=1)
    assert "InvalidRequestException" in refused.stderr  # selections first, as AWS requires
    operator_cli.run("selections", "delete", plan_id, selection_id)
    operator_cli.run("plans", "delete", plan_id)
    assert operator_cli.json("plans", "list") == {"BackupPlansList": []}

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = operator_cli.run("plans", "create", "-f", str(broken), expect=1)
    assert "is not valid JSON" in bad.stderr
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"BackupPlanName": "x", "Rules": [{"RuleName": "r"}]}))
    incomplete = operator_cli.run("plans", "create", "-f", str(invalid), expect=1)
    assert "TargetBackupVaultName" in incomplete.stderr  # botocore's own check, before any request
    rule = {"RuleName": "r", "TargetBackupVaultName": "main", "ScheduleExpression": "cron(every day)"}
    invalid.write_text(json.dumps({"BackupPlanName": "x", "Rules": [rule]}))
    rejected = operator_cli.run("plans", "create", "-f", str(invalid), expect=1)
    assert "InvalidParameterValueException (HTTP 400)" in rejected.stderr and "cron" in rejected.stderr


# --- backups, restores and status ------------------------------------------------------------------


def test_backup_now_restore_jobs_and_status(
    operator_cli: OperatorCli, api_server: ApiServer, tmp_path: Path
) -> None:
    configure_admin(operator_cli, api_server)
    shares = tmp_path / "shares"
    source = shares / "photos"
    (source / "2024").mkdir(parents=True)
    (source / "2024" / "beach.raw").write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    (source / "notes.txt").write_text("sand everywhere\n")
    operator_cli.run("vaults", "create", "main")

    registered = operator_cli.json(
        "endpoints",
        "register",
        "nas",
        "--type",
        "Filesystem",
        "--connection",
        f"root={shares}",
        "--tag",
        "site=home",
    )
    assert registered["EndpointName"] == "nas" and registered["DefaultTags"] == {"site": "home"}
    assert [item["EndpointName"] for item in operator_cli.json("endpoints", "list")["SourceEndpoints"]] == [
        "nas"
    ]
    discovered = operator_cli.json("endpoints", "discover", "nas")
    resources = operator_cli.json("resources", "list")["Resources"]
    (photos,) = [item for item in resources if item["ResourceName"] == "photos"]
    assert photos["ResourceArn"] in discovered["ResourceArns"]
    assert "photos" in operator_cli.run("resources", "list").stdout
    resource_arn = photos["ResourceArn"]

    # A job stopped before any worker runs: it ends ABORTED and is reported as a failure.
    aborted = operator_cli.json("backup-now", resource_arn, "--vault", "main")["BackupJobId"]
    operator_cli.run("jobs", "stop", aborted)
    assert operator_cli.json("jobs", "describe", aborted)["State"] == "ABORTED"
    before = operator_cli.json("status")
    assert before["ResourcesWithoutRecentBackup"] == [
        {"ResourceArn": resource_arn, "ResourceType": "Filesystem", "ResourceName": "photos"}
    ]
    assert [(job["JobId"], job["State"]) for job in before["FailedJobs"]] == [(aborted, "ABORTED")]

    with worker_thread(api_server.context):
        backup = operator_cli.run(
            "backup-now",
            resource_arn,
            "--vault",
            "main",
            "--wait",
            "--poll",
            "0.1",
            "--timeout",
            "120",
            "--json",
        )
        job = json.loads(backup.stdout)
        assert job["State"] == "COMPLETED" and job["BackupVaultName"] == "main"
        assert "COMPLETED" in backup.stderr  # progress lines go to stderr
        points = operator_cli.json("recovery-points", "list", "--vault", "main")["RecoveryPoints"]
        assert [(point["RecoveryPointArn"], point["Status"]) for point in points] == [
            (job["RecoveryPointArn"], "COMPLETED")
        ]
        point_arn = job["RecoveryPointArn"]
        by_resource = operator_cli.json("recovery-points", "list", "--resource", resource_arn)[
            "RecoveryPoints"
        ]
        assert [point["RecoveryPointArn"] for point in by_resource] == [point_arn]
        assert operator_cli.json("recovery-points", "describe", point_arn)["BackupVaultName"] == "main"

        target = shares / "restored"
        restored = operator_cli.run(
            "restore", point_arn, "--to", str(target), "--wait", "--poll", "0.1", "--timeout", "120"
        )
        assert "COMPLETED" in restored.stdout
        assert tree_digest(target) == tree_digest(source)
        assert (target / "2024" / "beach.raw").read_bytes() == (source / "2024" / "beach.raw").read_bytes()
        # Restoring onto an existing copy is refused by the connector; the job fails with the reason.
        again = operator_cli.run(
            "restore", point_arn, "--to", str(target), "--vault", "main", "--wait", "--poll", "0.1", expect=1
        )
        assert "FAILED" in again.stderr

    jobs = operator_cli.json("jobs", "list")
    assert sorted(item["State"] for item in jobs["BackupJobs"]) == ["ABORTED", "COMPLETED"]
    assert sorted(item["Status"] for item in jobs["RestoreJobs"]) == ["COMPLETED", "FAILED"]
    assert jobs["CopyJobs"] == []
    only_failed = operator_cli.json("jobs", "list", "--type", "restore", "--state", "failed")
    assert [item["Status"] for item in only_failed["RestoreJobs"]] == ["FAILED"]
    assert set(only_failed) == {"RestoreJobs"}
    wrong_state = operator_cli.run("jobs", "list", "--type", "restore", "--state", "PARTIAL", expect=1)
    assert "does not apply to restore jobs" in wrong_state.stderr
    table = operator_cli.run("jobs", "list").stdout
    assert aborted in table and "restore" in table
    restore_id = next(item["RestoreJobId"] for item in jobs["RestoreJobs"] if item["Status"] == "COMPLETED")
    assert operator_cli.json("jobs", "describe", restore_id)["JobType"] == "restore"
    assert "ResourceNotFoundException" in operator_cli.run("jobs", "describe", "no-such-job", expect=1).stderr

    summary = operator_cli.json("status")
    assert summary["Vaults"] == [{"BackupVaultName": "main", "NumberOfRecoveryPoints": 1, "Locked": False}]
    assert summary["JobsByState"]["backup"] == {"ABORTED": 1, "COMPLETED": 1}
    assert summary["JobsByState"]["restore"] == {"COMPLETED": 1, "FAILED": 1}
    assert summary["ActiveJobs"] == []
    # The restored copy was discovered as no resource (no discovery since); photos is backed up now.
    assert all(item["ResourceArn"] != resource_arn for item in summary["ResourcesWithoutRecentBackup"])
    failed = {job["JobId"]: job for job in summary["FailedJobs"]}
    assert failed[aborted]["State"] == "ABORTED"
    assert any(job["State"] == "FAILED" and job.get("StatusMessage") for job in failed.values())
    screen = operator_cli.run("status").stdout
    for expected in ("main", "Jobs in the last 24 h", "COMPLETED", "ABORTED", "Failed jobs"):
        assert expected in screen

    operator_cli.run("recovery-points", "delete", point_arn)
    operator_cli.run("vaults", "delete", "main")
    operator_cli.run("endpoints", "delete", "nas")
    assert operator_cli.json("endpoints", "list") == {"SourceEndpoints": []}


def test_restore_target_and_metadata_errors_are_clear(
    operator_cli: OperatorCli, sqlite_server: ApiServer
) -> None:
    configure_admin(operator_cli, sqlite_server)
    unknown = "arn:aws:backup:local:000000000000:recovery-point:does-not-exist"
    missing = operator_cli.run("restore", unknown, "--to", "/tmp/x", expect=1)
    assert "no vault holds recovery point" in missing.stderr
    bad_pair = operator_cli.run("restore", unknown, "--metadata", "no-equals-sign", expect=1)
    assert "is not KEY=VALUE" in bad_pair.stderr
    no_vault = operator_cli.run(
        "backup-now", "arn:aws:backvault:local:000000000000:filesystem/x", "--vault", "nope", expect=1
    )
    assert "ResourceNotFoundException" in no_vault.stderr
    both: Any = operator_cli.run("recovery-points", "list", expect=1)
    assert "--vault NAME or --resource ARN" in both.stderr


def test_endpoint_credentials_go_through_stdin_and_are_never_shown(
    operator_cli: OperatorCli, sqlite_server: ApiServer, tmp_path: Path
) -> None:
    configure_admin(operator_cli, sqlite_server)
    (tmp_path / "root").mkdir()
    secret = "s3cret-value-never-shown"
    registered = operator_cli.run(
        "endpoints",
        "register",
        "files",
        "--type",
        "Filesystem",
        "--connection",
        f"root={tmp_path / 'root'}",
        "--credentials-file",
        "-",
        "--json",
        input=json.dumps({"password": secret}),
    )
    assert json.loads(registered.stdout)["CredentialsType"] == "STORED"
    described = operator_cli.run("endpoints", "describe", "files")
    listed = operator_cli.run("endpoints", "list", "--json")
    for output in (registered.output, described.output, listed.output):
        assert secret not in output
    assert "STORED" in described.stdout
    redis = ("--type", "Redis", "--connection", "port=6379")
    reference = ("--credentials-env", "BACKVAULT_TEST_UNSET_VARIABLE")
    with_reference = operator_cli.run("endpoints", "register", "cache", *redis, *reference, expect=1)
    assert (
        "BACKVAULT_TEST_UNSET_VARIABLE" in with_reference.stderr
        and "DependencyFailure" in with_reference.stderr
    )
    both_ways = ("--credentials-env", "A", "--credentials-file", "-")
    conflicting = operator_cli.run("endpoints", "register", "x", "--type", "Filesystem", *both_ways, expect=1)
    assert "one way" in conflicting.stderr
    operator_cli.run("endpoints", "delete", "files")
    assert "ResourceNotFoundException" in operator_cli.run("endpoints", "describe", "files", expect=1).stderr
