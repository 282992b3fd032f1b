"""``backvault audit`` on a data directory (SQLite, and PostgreSQL via BACKVAULT_DATABASE_URL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from backvault.cli.audit_commands import register
from backvault.control.catalog import ProtectedResource, open_catalog
from backvault.control.context import ServiceContext
from backvault.control.frameworks import create_framework
from backvault.control.locations import ensure_default_location
from backvault.control.plans import create_backup_plan
from backvault.control.secrets import load_master_secret
from backvault.control.selections import create_backup_selection
from backvault.control.vaults import create_backup_vault

cli = typer.Typer()
register(cli)


@cli.callback()
def _root() -> None:
    """A group, so the command is invoked by name as under ``backvault``."""


FILES = "arn:aws:backvault:local:000000000000:filesystem:files/{}"
PROTECTED = "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN"
ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"


@pytest.fixture
def backend(database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Point the command at the backend under test (None: SQLite in the data directory)."""
    if database_url is not None:
        monkeypatch.setenv("BACKVAULT_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "250")  # one table row per finding, whatever the terminal
    return database_url


@pytest.fixture
def context(backend: str | None, data_dir: Path) -> Iterator[ServiceContext]:
    """A service context on the catalog the command opens: a vault, a plan for backup=daily, two resources."""
    service = ServiceContext(
        catalog=open_catalog(backend, data_dir), master_secret=load_master_secret(data_dir)
    )
    try:
        ensure_default_location(service, data_dir / "vaults")
        create_backup_vault(service, "main")
        plan = create_backup_plan(
            service,
            {"BackupPlanName": "daily", "Rules": [{"RuleName": "nightly", "TargetBackupVaultName": "main"}]},
        )
        create_backup_selection(
            service,
            plan["BackupPlanId"],
            {
                "SelectionName": "tagged",
                "IamRoleArn": ROLE,
                "ListOfTags": [
                    {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
                ],
            },
        )
        with service.catalog.transaction() as session:
            for name, tags in (("covered", {"backup": "daily"}), ("[red]forgotten[/red]", {})):
                session.add(
                    ProtectedResource(
                        arn=FILES.format(name),
                        resource_type="Filesystem",
                        resource_name=name,
                        native_tags=tags,
                        creation_date=datetime.now(UTC),
                    )
                )
        yield service
    finally:
        service.catalog.dispose()


@pytest.fixture
def run(data_dir: Path) -> Any:
    """Run ``backvault audit ARGS`` against the data directory; check the exit status."""
    runner = CliRunner()

    def invoke(*args: str, expect: int) -> Any:
        result = runner.invoke(cli, ["audit", "--data-dir", str(data_dir), *args])
        assert result.exit_code == expect, (result.stdout, result.stderr, result.exception)
        return result

    return invoke


def test_findings_are_printed_with_the_reason_and_exit_1(context: ServiceContext, run: Any) -> None:
    forgotten = FILES.format("[red]forgotten[/red]")
    table = run(expect=1).stdout
    assert "finding(s)" in table
    assert forgotten in table  # printed as is: never read as rich markup
    assert "no backup plan selects this resource" in table

    answer = json.loads(run("--json", expect=1).stdout)
    assert answer["Compliant"] is False and answer["Framework"] is None
    unprotected = [item for item in answer["Findings"] if item["ControlName"] == PROTECTED]
    assert [(item["ResourceArn"], item["Reason"]) for item in unprotected] == [
        (forgotten, "no backup plan selects this resource")
    ]
    # every control is evaluated by default: the covered resource has no recovery point yet either
    assert {item["ResourceArn"] for item in answer["Findings"]} >= {FILES.format("covered"), forgotten}


def test_a_framework_decides_what_is_checked(context: ServiceContext, run: Any) -> None:
    create_framework(context, "Everything", [{"ControlName": PROTECTED}])
    create_framework(
        context,
        "Covered",
        [{"ControlName": PROTECTED, "ControlScope": {"Tags": {"backup": "daily"}}}],
    )
    answer = json.loads(run("--framework", "Everything", "--json", expect=1).stdout)
    assert [item["ResourceArn"] for item in answer["Findings"]] == [FILES.format("[red]forgotten[/red]")]
    assert answer["EvaluatedCount"] == 2 and answer["Findings"][0]["StatusSince"]

    compliant = run("--framework", "Covered", expect=0)
    assert "compliant:" in compliant.stdout and "1 evaluation(s) of framework Covered" in compliant.stdout
    assert json.loads(run("--framework", "Covered", "--json", expect=0).stdout)["Compliant"] is True


def test_an_empty_catalog_is_compliant_and_errors_exit_2(
    backend: str | None, data_dir: Path, run: Any, tmp_path: Path
) -> None:
    open_catalog(backend, data_dir).dispose()
    assert "compliant:" in run(expect=0).stdout
    assert "Framework 'Nope' does not exist" in run("--framework", "Nope", expect=2).stderr
    if backend is None:
        missing = CliRunner().invoke(cli, ["audit", "--data-dir", str(tmp_path / "typo")])
        assert missing.exit_code == 2 and "no catalog in" in missing.stderr
        assert not (tmp_path / "typo").exists()
