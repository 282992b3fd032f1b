"""Notifications end to end: a real ``backvault server`` process, the operator CLI, and a local webhook.

The operator registers a signed webhook sink and a failures-only vault subscription with the CLI; a
backup of a resource whose endpoint was deleted fails in the server's worker; the server's scheduler
dispatches and delivers the event, and the receiver on 127.0.0.1 checks the HMAC signature.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from e2e_helpers import BACKVAULT, ApiServer, server_process
from operator_fixtures import OperatorCli, operator_cli

from backvault.control.notification_senders import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

__all__ = ["operator_cli"]  # the fixture, imported so pytest finds it here

HOOK_SECRET = "e2e-webhook-hmac-key-never-shown"


def _helpers() -> ModuleType:
    # The local HTTP receiver is shared with the control tests.
    path = Path(__file__).resolve().parents[1] / "unit" / "control" / "notification_helpers.py"
    spec = importlib.util.spec_from_file_location("backvault_e2e_notification_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Receiver: Any = _helpers().Receiver


@pytest.fixture
def receiver() -> Iterator[Any]:
    running = Receiver()
    yield running
    running.close()


def _environment() -> dict[str, str]:
    environment = {**os.environ, "BACKVAULT_TEST_FAST_KDF": "1"}
    for variable in ("BACKVAULT_DATABASE_URL", "BACKVAULT_MASTER_SECRET", "HOOK_SECRET"):
        environment.pop(variable, None)
    return environment


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A ``backvault server`` process: the API, a fast scheduler and one worker; yields (url, key, log)."""
    data_dir = tmp_path / "data"
    bootstrap = subprocess.run(
        [*BACKVAULT, "admin", "bootstrap", "--data-dir", str(data_dir), "--json"],
        env=_environment(),
        capture_output=True,
        timeout=60,
    )
    assert bootstrap.returncode == 0, bootstrap.stderr.decode()
    key = json.loads(bootstrap.stdout)
    with server_process(data_dir, tmp_path / "server.log", _environment()) as (_process, url):
        yield url, key, tmp_path / "server.log"


def test_a_failed_backup_reaches_a_signed_webhook_through_a_real_server(
    server: tuple[str, dict[str, str], Path],
    operator_cli: OperatorCli,
    receiver: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, key, log = server
    operator_cli.configure(url, key["AccessKeyId"], key["SecretAccessKey"])
    monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET)
    created = operator_cli.run(
        "notifications",
        "sinks",
        "create",
        "ops",
        "--type",
        "webhook",
        "--url",
        receiver.url,
        "--secret-env",
        "HOOK_SECRET",
    )
    assert "created webhook sink ops" in created.stdout and HOOK_SECRET not in created.output
    operator_cli.run("vaults", "create", "main")
    operator_cli.run(
        "vaults",
        "notifications",
        "set",
        "main",
        "--sink",
        "ops",
        "--events",
        "BACKUP_JOB_STARTED,BACKUP_JOB_COMPLETED,BACKUP_JOB_FAILED",
        "--failures-only",
    )
    shown = operator_cli.json("vaults", "notifications", "show", "main")
    assert (shown["SinkName"], shown["FailuresOnly"]) == ("ops", True)

    # A resource whose endpoint is gone: its backup fails at once in the worker (no retries).
    root = tmp_path / "shares"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "cat.jpg").write_bytes(os.urandom(10_000))
    operator_cli.run("endpoints", "register", "files", "--type", "Filesystem", "--connection", f"root={root}")
    operator_cli.run("endpoints", "discover", "files")
    operator_cli.run("endpoints", "delete", "files")
    resource = "arn:aws:backvault:local:000000000000:filesystem:files/photos"
    backup = operator_cli.run("backup-now", resource, "--vault", "main", "--wait", "--json", expect=1)
    job = json.loads(backup.stdout)
    assert job["State"] == "FAILED"

    ((headers, body),) = receiver.wait_for(1, timeout=30)
    assert headers[SIGNATURE_HEADER] == signature(HOOK_SECRET.encode(), headers[TIMESTAMP_HEADER], body)
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert (payload["EventType"], payload["BackupVaultName"], payload["ResourceArn"]) == (
        "BACKUP_JOB_FAILED",
        "main",
        resource,
    )
    assert payload["JobId"] == job["BackupJobId"] and "deleted" in payload["Detail"]["StatusMessage"]
    time.sleep(1.5)  # a few more scheduler ticks: BACKUP_JOB_STARTED must stay filtered out
    assert len(receiver.requests) == 1

    (delivery,) = operator_cli.json("notifications", "deliveries", "--sink", "ops", "--status", "DELIVERED")[
        "Deliveries"
    ]
    assert (delivery["EventType"], delivery["AttemptCount"]) == ("BACKUP_JOB_FAILED", 1)
    assert delivery["Attempts"][0]["Succeeded"] is True
    table = operator_cli.run("notifications", "deliveries").stdout
    assert "BACKUP_JOB_FAILED" in table and "DELIVERED" in table
    listed = operator_cli.run("notifications", "sinks", "list").stdout
    assert "ops" in listed and receiver.url in listed
    for text in (listed, table, json.dumps(shown), log.read_text()):
        assert HOOK_SECRET not in text


def test_sink_commands_take_secrets_from_stdin_or_the_environment_only(
    operator_cli: OperatorCli, sqlite_server: ApiServer, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator_cli.configure(
        sqlite_server.endpoint_url, sqlite_server.access_key_id, sqlite_server.secret_access_key
    )
    missing = operator_cli.run(
        "notifications", "sinks", "create", "ops", "--type", "webhook", "--url", receiver.url,
        "--secret-env", "HOOK_SECRET", expect=1,
    )  # fmt: skip
    assert "HOOK_SECRET is not set" in missing.stderr
    created = operator_cli.run(
        "notifications", "sinks", "create", "ops", "--type", "webhook", "--url", receiver.url,
        "--secret-prompt", "--json", input=HOOK_SECRET + "\n",
    )  # fmt: skip
    assert json.loads(created.stdout)["HasSecret"] is True and HOOK_SECRET not in created.output
    operator_cli.run(
        "notifications", "sinks", "create", "mail", "--type", "email", "--smtp-host", "127.0.0.1",
        "--smtp-port", "2525", "--sender", "a@b.test", "--recipient", "c@d.test", "--recipient", "e@f.test",
    )  # fmt: skip
    mail = operator_cli.json("notifications", "sinks", "describe", "mail")
    assert mail["Settings"]["Recipients"] == ["c@d.test", "e@f.test"] and mail["HasSecret"] is False
    monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET + "-rotated")
    rotated = operator_cli.json("notifications", "sinks", "update", "ops", "--secret-env", "HOOK_SECRET")
    assert rotated["HasSecret"] is True
    cleared = operator_cli.json(
        "notifications", "sinks", "update", "ops", "--clear-secret", "--failures-only"
    )
    assert (cleared["HasSecret"], cleared["FailuresOnly"]) == (False, True)
    bad = operator_cli.run("notifications", "deliveries", "--status", "lost", expect=1)
    assert "'LOST': use one of PENDING, DELIVERED, FAILED" in bad.stderr
    unknown = operator_cli.run("notifications", "deliveries", "--sink", "nope", expect=1)
    assert "ResourceNotFoundException" in unknown.stderr
    no_vault = operator_cli.run(
        "vaults",
        "notifications",
        "set",
        "missing",
        "--sink",
        "ops",
        "--events",
        "BACKUP_JOB_FAILED",
        expect=1,
    )
    assert "ResourceNotFoundException" in no_vault.stderr
    operator_cli.run("notifications", "sinks", "delete", "mail")
    names = [sink["SinkName"] for sink in operator_cli.json("notifications", "sinks", "list")["Sinks"]]
    assert names == ["ops"]
