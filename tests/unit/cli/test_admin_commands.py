"""``backvault admin|users|keys`` on a data directory (SQLite, and PostgreSQL via BACKVAULT_DATABASE_URL)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from backvault.cli.admin_commands import admin_app, keys_app, users_app
from backvault.control import identity
from backvault.control.catalog import open_catalog
from backvault.control.context import ServiceContext
from backvault.control.secrets import load_master_secret

cli = typer.Typer()
cli.add_typer(admin_app, name="admin")
cli.add_typer(users_app, name="users")
cli.add_typer(keys_app, name="keys")

READER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "backup:List*", "Resource": "*"}],
}


@pytest.fixture
def backend(database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Point the commands at the backend under test (None: SQLite in the data directory)."""
    if database_url is not None:
        monkeypatch.setenv("BACKVAULT_DATABASE_URL", database_url)
    return database_url


@pytest.fixture
def run(backend: str | None, data_dir: Path) -> Iterator[Any]:
    """Run a command line against the data directory; return the result (fails on a non-zero exit)."""
    runner = CliRunner()

    def invoke(*args: str, expect: int = 0, stdin: str | None = None) -> Any:
        result = runner.invoke(cli, [*args[:2], "--data-dir", str(data_dir), *args[2:]], input=stdin)
        assert result.exit_code == expect, (result.stdout, result.stderr, result.exception)
        return result

    yield invoke


def service(data_dir: Path, backend: str | None) -> ServiceContext:
    """A service context on the same catalog the commands use."""
    return ServiceContext(catalog=open_catalog(backend, data_dir), master_secret=load_master_secret(data_dir))


def test_bootstrap_creates_one_admin_key_once(run: Any, data_dir: Path, backend: str | None) -> None:
    first = run("admin", "bootstrap", "--json")
    key = json.loads(first.stdout)
    assert set(key) == {"AccessKeyId", "SecretAccessKey"}
    context = service(data_dir, backend)
    try:
        principal, secret = identity.signing_secret(context, key["AccessKeyId"])
        assert secret == key["SecretAccessKey"] and principal.user_name == "admin"
    finally:
        context.catalog.dispose()
    again = run("admin", "bootstrap", "--json")
    answer = json.loads(again.stdout)
    assert answer["Created"] is False and "already exists" in answer["Message"]
    assert key["SecretAccessKey"] not in again.stdout + again.stderr
    plain = run("admin", "bootstrap")
    assert "nothing was created" in plain.stdout
    listed = run("keys", "list", "--json")
    assert [k["AccessKeyId"] for k in json.loads(listed.stdout)["AccessKeyMetadata"]] == [key["AccessKeyId"]]
    assert key["SecretAccessKey"] not in listed.stdout


def test_users_and_keys_lifecycle(run: Any, tmp_path: Path, data_dir: Path, backend: str | None) -> None:
    policy = tmp_path / "reader.json"
    policy.write_text(json.dumps(READER))
    run("users", "create", "alice", "--policy-file", str(policy))
    created = run("keys", "create", "alice")
    assert "Store the secret now" in created.stdout
    key_id = created.stdout.split("AccessKeyId:", 1)[1].split()[0]
    secret = created.stdout.split("SecretAccessKey:", 1)[1].split()[0]
    assert len(key_id) == 20 and len(secret) == 40

    table = run("users", "list").stdout
    assert "alice" in table and key_id in table
    users = json.loads(run("users", "list", "--json").stdout)["Users"]
    assert users[0]["UserName"] == "alice" and users[0]["AccessKeyIds"] == [key_id]
    assert json.loads(run("users", "get-policy", "alice", "default").stdout)["Statement"][0]["Action"] == [
        "backup:List*"
    ]
    keys_table = run("keys", "list", "--user", "alice").stdout
    assert key_id in keys_table and "Active" in keys_table and secret not in keys_table

    run("users", "put-policy", "alice", "more", "--document", "-", stdin=json.dumps(READER))
    assert "more" in json.loads(run("users", "list", "--json").stdout)["Users"][0]["PolicyNames"]
    run("users", "delete-policy", "alice", "more")

    run("keys", "deactivate", key_id)
    assert "Inactive" in run("keys", "list").stdout
    run("keys", "activate", key_id)

    refused = run("users", "delete", "alice", expect=1)
    assert "still has 1 access key" in refused.stderr
    wrong_owner = run("keys", "delete", key_id, "--user", "bob", expect=1)
    assert "does not exist" in wrong_owner.stderr
    run("keys", "delete", key_id)
    run("users", "delete", "alice", "--force")
    assert json.loads(run("users", "list", "--json").stdout)["Users"] == []


def test_bad_input_is_reported_clearly(run: Any, tmp_path: Path) -> None:
    assert "UserName 'no spaces' is not valid" in run("users", "create", "no spaces", expect=1).stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"Statement": [{"Effect": "Allow", "Action": "*"}]}')
    answer = run("users", "create", "carol", "--policy-file", str(broken), expect=1)
    assert "exactly one of Resource or NotResource" in answer.stderr
    assert json.loads(run("users", "list", "--json").stdout)["Users"] == []  # nothing half-created
    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    assert (
        "not valid JSON" in run("users", "create", "carol", "--policy-file", str(not_json), expect=1).stderr
    )
    assert "does not exist" in run("keys", "create", "nobody", expect=1).stderr
    missing = run("users", "put-policy", "x", "p", "--document", str(tmp_path / "absent.json"), expect=1)
    assert "cannot read the policy document" in missing.stderr


def test_bootstrap_in_a_real_process_prints_only_json(tmp_path: Path) -> None:
    """The way scripts use it: stdout is one JSON document, and the secret appears nowhere else."""
    program = (
        "import typer, sys; from backvault.cli.admin_commands import admin_app; "
        "app = typer.Typer(); app.add_typer(admin_app, name='admin'); app()"
    )
    command = [
        sys.executable,
        "-c",
        program,
        "admin",
        "bootstrap",
        "--data-dir",
        str(tmp_path / "d"),
        "--json",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    key = json.loads(first.stdout)
    assert key["SecretAccessKey"] not in first.stderr
    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(second.stdout)["Created"] is False
    assert key["SecretAccessKey"] not in second.stdout + second.stderr
