"""backvault apply with notification sinks and vault notifications: idempotence, updates, prune, errors."""

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
from backvault.control.apply import apply_config
from backvault.control.catalog.notification_models import NotificationSink
from backvault.control.context import ServiceContext
from backvault.control.notifications import (
    create_notification_sink,
    describe_notification_sink,
    list_notification_sinks,
)
from backvault.control.vault_settings import get_backup_vault_notification_settings
from backvault.domain.errors import InvalidParameterValueException, InvalidRequestException

HOOK_KEY = "apply-hook-key-never-shown"
ENVIRONMENT = {"HOOK_KEY": HOOK_KEY, "MAIL_PASSWORD": "mail-password-never-shown"}


def _document() -> dict[str, Any]:
    return {
        "notification_sinks": [
            {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "env:HOOK_KEY"},
            {
                "name": "mail",
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": 2525,
                "sender": "backvault@example.test",
                "recipients": ["ops@example.test"],
                "username": "backvault",
                "secret": "env:MAIL_PASSWORD",
                "failures_only": True,
            },
        ],
        "vaults": [
            {
                "name": "main",
                "notifications": {
                    "sink": "hook",
                    "events": ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"],
                    "failures_only": True,
                },
            },
            {"name": "other", "notifications": {"sink": "mail", "events": ["COPY_JOB_FAILED"]}},
        ],
    }


def _actions(report: Any) -> dict[tuple[str, str], str]:
    return {(change.kind, change.name): change.action for change in report.changes}


def _wrapped_secret(context: ServiceContext, name: str) -> str | None:
    with context.catalog.transaction() as session:
        row = session.get(NotificationSink, name)
        assert row is not None
        return row.wrapped_secret


def test_apply_creates_sinks_and_vault_settings_and_a_second_apply_changes_nothing(
    context: ServiceContext,
) -> None:
    report = apply_config(context, _document(), environ=ENVIRONMENT)
    assert _actions(report) == {
        ("sink", "hook"): "create",
        ("sink", "mail"): "create",
        ("vault", "main"): "create",
        ("vault", "other"): "create",
    }
    hook = describe_notification_sink(context, "hook")
    assert hook["HasSecret"] and hook["Settings"] == {"Url": "http://127.0.0.1:9/hook"}
    mail = describe_notification_sink(context, "mail")
    assert mail["FailuresOnly"] and mail["Settings"]["SmtpPort"] == 2525
    settings = get_backup_vault_notification_settings(context, "main")
    assert (settings["SinkName"], settings["FailuresOnly"]) == ("hook", True)
    assert settings["BackupVaultEvents"] == ["BACKUP_JOB_COMPLETED", "BACKUP_JOB_FAILED"]
    assert get_backup_vault_notification_settings(context, "other")["FailuresOnly"] is False
    shown = json.dumps([report.to_dict(), list_notification_sinks(context)], default=str)
    assert HOOK_KEY not in shown and "mail-password" not in shown
    wrapped = _wrapped_secret(context, "hook")
    assert wrapped is not None and HOOK_KEY not in wrapped

    again = apply_config(context, _document(), environ=dict(ENVIRONMENT))
    assert not again.changed and set(_actions(again).values()) == {"unchanged"}
    assert _wrapped_secret(context, "hook") == wrapped  # not even rewrapped


def test_changed_settings_secrets_and_flags_update_in_place(context: ServiceContext) -> None:
    apply_config(context, _document(), environ=ENVIRONMENT)
    document = _document()
    document["notification_sinks"][0]["url"] = "http://127.0.0.1:10/hook"
    del document["notification_sinks"][1]["username"]  # a whole sink is declared: the login goes
    document["vaults"][0]["notifications"]["failures_only"] = False
    report = apply_config(context, document, environ={**ENVIRONMENT, "HOOK_KEY": "rotated"})
    changes = {(change.kind, change.name): (change.action, change.detail) for change in report.changes}
    assert changes[("sink", "hook")] == ("update", "settings, secret")
    assert changes[("sink", "mail")] == ("update", "settings")
    assert changes[("vault", "main")] == ("update", "notifications")
    assert changes[("vault", "other")] == ("unchanged", "")
    assert describe_notification_sink(context, "hook")["Settings"]["Url"] == "http://127.0.0.1:10/hook"
    assert describe_notification_sink(context, "mail")["Settings"]["Username"] is None
    assert get_backup_vault_notification_settings(context, "main")["FailuresOnly"] is False
    assert not apply_config(context, document, environ={**ENVIRONMENT, "HOOK_KEY": "rotated"}).changed
    # without a secret in the document, the stored one is left alone
    del document["notification_sinks"][0]["secret"]
    assert not apply_config(
        context, document, environ={"MAIL_PASSWORD": ENVIRONMENT["MAIL_PASSWORD"]}
    ).changed
    assert describe_notification_sink(context, "hook")["HasSecret"] is True


def test_undeclared_sinks_are_absent_until_prune_and_null_removes_a_vault_configuration(
    context: ServiceContext,
) -> None:
    apply_config(context, _document(), environ=ENVIRONMENT)
    smaller = copy.deepcopy(_document())
    del smaller["notification_sinks"][1]
    smaller["vaults"][1]["notifications"] = None
    report = apply_config(context, smaller, environ=ENVIRONMENT)
    assert _actions(report)[("sink", "mail")] == "absent"
    assert _actions(report)[("vault", "other")] == "update"
    assert describe_notification_sink(context, "mail")["SinkName"] == "mail"
    pruned = apply_config(context, smaller, prune=True, environ=ENVIRONMENT)
    assert _actions(pruned)[("sink", "mail")] == "delete"
    with context.catalog.transaction() as session:
        assert session.scalars(select(NotificationSink.name)).all() == ["hook"]
    assert not apply_config(context, smaller, prune=True, environ=ENVIRONMENT).changed
    # with prune, a vault may only name a declared sink: an undeclared one is about to go
    create_notification_sink(context, "manual", "webhook", url="http://127.0.0.1:9/")
    smaller["vaults"][1]["notifications"] = {"sink": "manual", "events": ["COPY_JOB_FAILED"]}
    with pytest.raises(
        InvalidParameterValueException, match="'manual' is not declared under notification_sinks"
    ):
        apply_config(context, smaller, prune=True, environ=ENVIRONMENT)
    assert _actions(apply_config(context, smaller, environ=ENVIRONMENT))[("sink", "manual")] == "absent"
    smaller["vaults"][1]["notifications"] = None
    assert _actions(apply_config(context, smaller, environ=ENVIRONMENT))[("vault", "other")] == "update"
    # a vault that does not mention notifications keeps what it has
    del smaller["vaults"][0]["notifications"]
    assert not apply_config(context, smaller, environ=ENVIRONMENT).changed
    assert get_backup_vault_notification_settings(context, "main")["SinkName"] == "hook"


@pytest.mark.parametrize(
    ("edit", "environment", "path", "error"),
    [
        (
            lambda d: d["notification_sinks"][0].update(secret=HOOK_KEY),
            ENVIRONMENT,
            "notification_sinks[0].secret: give a reference such as env:VARIABLE",
            InvalidParameterValueException,
        ),
        (
            lambda d: None,
            {"MAIL_PASSWORD": "x"},
            "notification_sinks[0].secret: the environment variable HOOK_KEY is not set",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["vaults"][0]["notifications"].update(sink="pager"),
            ENVIRONMENT,
            "vaults[0].notifications.sink: 'pager' is not declared nor an existing sink",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["vaults"][0]["notifications"].update(events=["BACKUP_JOB_EXPLODED"]),
            ENVIRONMENT,
            "vaults[0].notifications.events: unknown event(s) BACKUP_JOB_EXPLODED",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["notification_sinks"][1].update(recipients=[]),
            ENVIRONMENT,
            "notification_sinks[1]: An email sink needs",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["notification_sinks"][0].update(type="pager"),
            ENVIRONMENT,
            "notification_sinks[0]: Sink type 'pager'",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["vaults"][1]["notifications"].update(failures_only="yes"),
            ENVIRONMENT,
            "vaults[1].notifications.failures_only must be true or false",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["notification_sinks"].append(dict(d["notification_sinks"][0])),
            ENVIRONMENT,
            "notification_sinks[2]: 'hook' is declared twice",
            InvalidParameterValueException,
        ),
        (
            lambda d: d["notification_sinks"][0].update(token="x"),
            ENVIRONMENT,
            "notification_sinks[0] has unknown member(s) token",
            InvalidRequestException,
        ),
    ],
)
def test_bad_notification_input_names_the_path_shows_no_secret_and_changes_nothing(
    context: ServiceContext, edit: Any, environment: dict[str, str], path: str, error: type[Exception]
) -> None:
    document = _document()
    edit(document)
    with pytest.raises(error) as raised:
        apply_config(context, document, environ=environment)
    assert path in str(raised.value)
    assert HOOK_KEY not in str(raised.value)
    assert list_notification_sinks(context)["Sinks"] == []


def test_cli_apply_reads_the_secret_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    config_file = tmp_path / "backvault.yaml"
    config_file.write_text(yaml.safe_dump(_document()))
    arguments = ["apply", "-f", str(config_file), "--data-dir", str(data_dir), "--json"]
    runner = CliRunner()
    missing = runner.invoke(app, arguments)
    assert missing.exit_code != 0 and "HOOK_KEY is not set" in missing.stderr
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["Counts"] == {"create": 4}
    assert HOOK_KEY not in result.output
    again = runner.invoke(app, arguments)
    assert json.loads(again.stdout)["Counts"] == {"unchanged": 4}
