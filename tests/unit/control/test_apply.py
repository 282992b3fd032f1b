"""backvault apply on SQLite and PostgreSQL: idempotence, updates, pruning, dry runs, error paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from backvault.cli.main import app
from backvault.control.apply import apply_config, default_iam_role
from backvault.control.apply_config import parse_config
from backvault.control.catalog import (
    BackupPlan,
    BackupSelection,
    BackupVault,
    SourceEndpoint,
    StorageLocation,
)
from backvault.control.context import ServiceContext
from backvault.control.plans import get_backup_plan
from backvault.domain.errors import InvalidParameterValueException, InvalidRequestException

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "backvault.yaml"


def _document(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "sources"
    root.mkdir(exist_ok=True)
    return {
        "version": 1,
        "locations": [{"name": "second", "type": "local", "path": str(tmp_path / "second")}],
        "vaults": [
            {"name": "main", "tags": {"owner": "ops"}},
            {"name": "copies", "location": "second", "lock": {"min_retention_days": 1}},
        ],
        "endpoints": [
            {
                "name": "files",
                "type": "Filesystem",
                "connection": {"root": str(root)},
                "default_tags": {"a": "b"},
            }
        ],
        "plans": [
            {
                "name": "daily",
                "tags": {"owner": "ops"},
                "rules": [
                    {
                        "name": "nightly",
                        "vault": "main",
                        "schedule": "cron(0 3 ? * * *)",
                        "timezone": "Europe/Berlin",
                        "start_window_minutes": 60,
                        "completion_window_minutes": 600,
                        "lifecycle": {"delete_after_days": 35},
                        "copy_actions": [{"vault": "copies", "lifecycle": {"delete_after_days": 10}}],
                    },
                    {"name": "weekly", "vault": "main", "schedule": "cron(0 4 ? * SUN *)"},
                ],
                "selections": [
                    {"name": "tagged", "tags": {"backup": ["daily", "yes"]}},
                    {
                        "name": "files",
                        "resources": ["arn:aws:backvault:*:*:filesystem:files/*"],
                        "conditions": {"string_not_equals": {"skip": "true"}},
                    },
                ],
            },
            {"name": "other", "rules": [{"name": "hourly", "vault": "main", "schedule": "rate(1 hour)"}]},
        ],
    }


def _actions(report: Any) -> dict[tuple[str, str], str]:
    return {(change.kind, change.name): change.action for change in report.changes}


def _plan_row(context: ServiceContext, name: str) -> BackupPlan:
    with context.catalog.transaction() as session:
        return session.scalars(select(BackupPlan).where(BackupPlan.name == name)).one()


def test_apply_creates_everything_and_a_second_apply_changes_nothing(
    context: ServiceContext, tmp_path: Path
) -> None:
    document = _document(tmp_path)
    report = apply_config(context, document)
    assert report.changed and set(_actions(report).values()) == {"create"}
    assert len(report.changes) == 8  # a location, 2 vaults, an endpoint, 2 plans, 2 selections
    plan = _plan_row(context, "daily")
    body = get_backup_plan(context, plan.id)["BackupPlan"]
    nightly = body["Rules"][0]
    assert nightly["ScheduleExpressionTimezone"] == "Europe/Berlin"
    assert nightly["CopyActions"][0]["DestinationBackupVaultArn"].endswith(
        ":second:000000000000:backup-vault:copies"
    )
    assert plan.tags == {"owner": "ops"}
    with context.catalog.transaction() as session:
        copies = session.get(BackupVault, "copies")
        assert copies is not None and copies.location_name == "second" and copies.locked
        assert copies.min_retention_days == 1
        selection = session.scalars(select(BackupSelection).where(BackupSelection.name == "tagged")).one()
        assert [tag["ConditionValue"] for tag in selection.document["ListOfTags"]] == ["daily", "yes"]
        assert selection.iam_role_arn == default_iam_role(context)
        endpoint = session.get(SourceEndpoint, "files")
        assert endpoint is not None and endpoint.default_tags == {"a": "b"}

    again = apply_config(context, copy.deepcopy(document))
    assert not again.changed
    assert set(_actions(again).values()) == {"unchanged"}
    assert _plan_row(context, "daily").version_count == 1


def test_changes_update_in_place_and_plans_get_a_version_only_when_changed(
    context: ServiceContext, tmp_path: Path
) -> None:
    document = _document(tmp_path)
    apply_config(context, document)
    rule_id = get_backup_plan(context, _plan_row(context, "daily").id)["BackupPlan"]["Rules"][0]["RuleId"]
    document["plans"][0]["rules"][0]["schedule"] = "cron(30 3 ? * * *)"
    document["plans"][0]["selections"][0]["tags"] = {"backup": "daily"}
    document["vaults"][0]["tags"] = {"owner": "platform"}
    document["endpoints"][0]["default_tags"] = {"a": "c"}
    report = apply_config(context, document)
    actions = _actions(report)
    assert actions[("plan", "daily")] == "update"
    assert actions[("plan", "other")] == "unchanged"
    assert actions[("selection", "daily/tagged")] == "update"
    assert actions[("selection", "daily/files")] == "unchanged"
    assert actions[("vault", "main")] == "update"
    assert actions[("vault", "copies")] == "unchanged"
    assert actions[("endpoint", "files")] == "update"
    daily = _plan_row(context, "daily")
    assert daily.version_count == 2
    rules = get_backup_plan(context, daily.id)["BackupPlan"]["Rules"]
    assert rules[0]["ScheduleExpression"] == "cron(30 3 ? * * *)"
    assert rules[0]["RuleId"] == rule_id  # the scheduler's memory of the rule survives the update
    assert _plan_row(context, "other").version_count == 1
    with context.catalog.transaction() as session:
        assert session.get(BackupVault, "main").tags == {"owner": "platform"}  # type: ignore[union-attr]
        tagged = session.scalars(select(BackupSelection).where(BackupSelection.name == "tagged")).one()
        assert [tag["ConditionValue"] for tag in tagged.document["ListOfTags"]] == ["daily"]
    assert not apply_config(context, document).changed


def test_removed_items_are_reported_and_deleted_only_with_prune(
    context: ServiceContext, tmp_path: Path
) -> None:
    document = _document(tmp_path)
    apply_config(context, document)
    smaller = copy.deepcopy(document)
    del smaller["plans"][1]
    del smaller["plans"][0]["selections"][1]
    smaller["vaults"] = [vault for vault in smaller["vaults"] if vault["name"] == "main"]
    smaller["plans"][0]["rules"][0]["copy_actions"] = []
    smaller["locations"] = []
    smaller["endpoints"] = []

    report = apply_config(context, smaller)
    actions = _actions(report)
    for item in (
        ("plan", "other"),
        ("selection", "daily/files"),
        ("vault", "copies"),
        ("location", "second"),
        ("endpoint", "files"),
    ):
        assert actions[item] == "absent"
    assert ("location", "local") not in actions  # the server's default location is not the file's
    with context.catalog.transaction() as session:
        assert session.get(BackupVault, "copies") is not None
        assert session.get(StorageLocation, "second") is not None
    assert _plan_row(context, "other").deletion_date is None

    pruned = apply_config(context, smaller, prune=True)
    actions = _actions(pruned)
    assert actions[("plan", "other")] == "delete"
    assert actions[("vault", "copies")] == "delete"
    assert actions[("location", "second")] == "delete"
    assert _plan_row(context, "other").deletion_date is not None
    with context.catalog.transaction() as session:
        assert session.get(BackupVault, "copies") is None
        assert session.get(StorageLocation, "second") is None
        assert session.get(SourceEndpoint, "files") is None
        assert session.scalars(select(BackupSelection.name)).all() == ["tagged"]
    assert not apply_config(context, smaller, prune=True).changed


def test_dry_run_reports_and_changes_nothing(context: ServiceContext, tmp_path: Path) -> None:
    report = apply_config(context, _document(tmp_path), dry_run=True)
    assert report.dry_run and report.changed
    assert set(_actions(report).values()) == {"create"}
    with context.catalog.transaction() as session:
        assert session.scalars(select(BackupVault)).all() == []
        assert session.scalars(select(BackupPlan)).all() == []


@pytest.mark.parametrize(
    ("edit", "path", "error"),
    [
        (
            lambda d: d["plans"][0]["rules"][1].update(schedule="cron(0 5 * * * *)"),
            "plans[0].rules[1].schedule",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["plans"][0]["rules"][0].update(timezone="Mars/Olympus"),
            "plans[0].rules[0].timezone",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["plans"][1]["rules"][0].update(vault="nowhere"),
            "plans[1].rules[0].vault",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["plans"][0]["rules"][0].update(schedul="x"),
            "plans[0].rules[0] has unknown member(s) schedul",
            InvalidRequestException,
        ),
        (
            lambda d: d["plans"][0]["rules"][0].update(start_window_minutes=10),
            "plans[0].rules[0]",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["plans"][0]["rules"][0]["lifecycle"].update(move_to_cold_storage_after_days=30),
            "plans[0].rules[0].lifecycle",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["plans"][0]["selections"][1].update(resources=["files/*"]),
            "plans[0].selections[1]",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["vaults"].append({"name": "main"}),
            "vaults[2]: 'main' is declared twice",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["endpoints"][0].update(credentials="hunter2"),
            "endpoints[0].credentials",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["vaults"][1]["lock"].update(min_retention_days="7"),
            "vaults[1].lock.min_retention_days",
            InvalidRequestException,
        ),
    ],
)
def test_bad_input_names_the_path_and_changes_nothing(
    context: ServiceContext, tmp_path: Path, edit: Any, path: str, error: type[Exception]
) -> None:
    document = _document(tmp_path)
    edit(document)
    with pytest.raises(error) as raised:
        apply_config(context, document)
    assert path in str(raised.value)
    assert "hunter2" not in str(raised.value)
    with context.catalog.transaction() as session:
        assert session.scalars(select(BackupVault)).all() == []


def test_a_change_that_cannot_be_made_in_place_is_refused_before_any_change(
    context: ServiceContext, tmp_path: Path
) -> None:
    document = _document(tmp_path)
    apply_config(context, document)
    document["locations"][0]["path"] = str(tmp_path / "elsewhere")
    document["vaults"].append({"name": "brand-new"})
    with pytest.raises(
        InvalidRequestException, match=r"locations\[0\]: storage location 'second' exists with different path"
    ):
        apply_config(context, document)
    with context.catalog.transaction() as session:
        assert session.get(BackupVault, "brand-new") is None
    document = _document(tmp_path)
    document["vaults"][0]["location"] = "second"
    with pytest.raises(
        InvalidRequestException, match=r"vaults\[0\].location: vault 'main' lives in location 'local'"
    ):
        apply_config(context, document)


def test_the_example_file_is_valid() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    config = parse_config(
        document,
        iam_role="arn:aws:iam::000000000000:role/backup",
        vault_arn=lambda name, _where: f"arn:aws:backup:local:000000000000:backup-vault:{name}",
        environ={"OPS_HOOK_KEY": "hook-key", "SMTP_PASSWORD": "smtp-password"},
    )
    assert [plan.name for plan in config.plans] == ["daily", "hourly-databases"]
    assert {vault.name for vault in config.vaults} == {"main", "offsite-main"}
    assert [sink.name for sink in config.notification_sinks] == ["ops-webhook", "ops-chat", "ops-mail"]
    assert {vault.notifications.sink for vault in config.vaults if vault.notifications} == {
        "ops-webhook",
        "ops-mail",
    }


def test_cli_apply_reads_yaml_reports_json_and_names_the_file_on_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config_file = tmp_path / "backvault.yaml"
    config_file.write_text(yaml.safe_dump(_document(tmp_path)))
    runner = CliRunner()
    arguments = ["apply", "-f", str(config_file), "--data-dir", str(data_dir), "--json"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert first["Changed"] and first["Counts"] == {"create": 8}
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["Counts"] == {"unchanged": 8}

    broken = _document(tmp_path)
    broken["plans"][0]["rules"][1]["schedule"] = "every day"
    config_file.write_text(yaml.safe_dump(broken))
    result = runner.invoke(app, ["apply", "-f", str(config_file), "--data-dir", str(data_dir)])
    assert result.exit_code != 0
    assert f"{config_file}: plans[0].rules[1].schedule" in result.stderr
    config_file.write_text("plans: [\n")
    result = runner.invoke(app, ["apply", "-f", str(config_file), "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and str(config_file) in result.stderr and "line" in result.stderr
