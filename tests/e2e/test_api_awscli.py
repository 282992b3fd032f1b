"""The AWS Backup API driven by the real AWS CLI (v1, in its own virtual environment).

``scripts/ensure-awscli.sh`` installs the pinned awscli into ``.venv-awscli`` on first use. The CLI
gets its credentials from the environment only (no config or credentials file is read), and talks
to the test server with ``--endpoint-url`` and ``--region local``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import REGION, ApiServer

ROOT = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = ROOT / "scripts" / "ensure-awscli.sh"


@pytest.fixture(scope="session")
def aws_cli() -> Path:
    """The path of the pinned AWS CLI, installed on first use."""
    completed = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if completed.returncode != 0:
        pytest.fail(f"scripts/ensure-awscli.sh failed:\n{completed.stderr[-3000:]}", pytrace=False)
    return Path(completed.stdout.strip().splitlines()[-1])


class Cli:
    """Runs `aws backup ...` against one server with one key."""

    def __init__(self, aws: Path, server: ApiServer, home: Path) -> None:
        self.aws = aws
        self.server = server
        self.home = home

    def run(self, *arguments: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the CLI; the key travels in the environment, never on the command line."""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "AWS_ACCESS_KEY_ID": self.server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.server.secret_access_key,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",
        }
        command = [
            str(self.aws),
            "backup",
            *arguments,
            "--endpoint-url",
            self.server.endpoint_url,
            "--region",
            REGION,
            "--output",
            "json",
        ]
        return subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=60, check=False
        )

    def json(self, *arguments: str) -> Any:
        """Run the CLI, insist on success and return its JSON output (None when it prints nothing)."""
        completed = self.run(*arguments)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout) if completed.stdout.strip() else None


@pytest.fixture
def cli(aws_cli: Path, sqlite_server: ApiServer, tmp_path: Path) -> Cli:
    """The AWS CLI bound to a fresh server."""
    home = tmp_path / "home"
    home.mkdir()
    return Cli(aws_cli, sqlite_server, home)


@pytest.mark.slow  # ten CLI processes: a few seconds each on a busy machine
def test_vaults_and_plans_with_the_aws_cli(cli: Cli, tmp_path: Path) -> None:
    created = cli.json("create-backup-vault", "--backup-vault-name", "main")
    assert created["BackupVaultArn"].endswith(":backup-vault:main")
    listed = cli.json("list-backup-vaults")
    assert [vault["BackupVaultName"] for vault in listed["BackupVaultList"]] == ["main"]
    # CLI v1 prints timestamps as they came on the wire: epoch seconds.
    assert abs(listed["BackupVaultList"][0]["CreationDate"] - time.time()) < 600

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
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
    )
    plan = cli.json("create-backup-plan", "--backup-plan", f"file://{plan_file}")
    fetched = cli.json("get-backup-plan", "--backup-plan-id", plan["BackupPlanId"])
    assert fetched["BackupPlan"]["Rules"][0]["TargetBackupVaultName"] == "main"
    selection = cli.json(
        "create-backup-selection",
        "--backup-plan-id",
        plan["BackupPlanId"],
        "--backup-selection",
        json.dumps(
            {
                "SelectionName": "tagged",
                "IamRoleArn": "arn:aws:iam::000000000000:role/backup",
                "ListOfTags": [
                    {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "yes"}
                ],
            }
        ),
    )
    selections = cli.json("list-backup-selections", "--backup-plan-id", plan["BackupPlanId"])
    assert [item["SelectionId"] for item in selections["BackupSelectionsList"]] == [selection["SelectionId"]]
    cli.json(
        "delete-backup-selection",
        "--backup-plan-id",
        plan["BackupPlanId"],
        "--selection-id",
        selection["SelectionId"],
    )
    cli.json("delete-backup-plan", "--backup-plan-id", plan["BackupPlanId"])
    assert cli.json("delete-backup-vault", "--backup-vault-name", "main") is None
    assert cli.json("list-backup-vaults")["BackupVaultList"] == []


def test_aws_cli_errors_name_the_aws_error_code(cli: Cli) -> None:
    missing = cli.run("describe-backup-vault", "--backup-vault-name", "nope")
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr
    assert "'nope' does not exist" in missing.stderr

    forged = cli.run("list-backup-vaults", secret="x" * 40)
    assert forged.returncode != 0
    assert "InvalidSignatureException" in forged.stderr
