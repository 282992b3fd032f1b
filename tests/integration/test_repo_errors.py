"""Bad input: one clear line on stderr, a non-zero exit, no traceback, and nothing written.

"Nothing written" is checked by comparing a full listing (names, sizes, mtimes) of the
repository location before and after; a location that did not exist must still not exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from repo_helpers import (
    PASSWORD,
    CliResult,
    cli_env,
    directory_listing,
    ok,
    run_cli,
    write_file,
)

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Every command that opens an existing repository; {source} and {target} are filled in per test.
OPENING_COMMANDS = [
    ["snapshots"],
    ["check", "--read-data"],
    ["backup", "{source}"],
    ["restore", "latest", "--target", "{target}"],
    ["ls", "latest"],
    ["stats"],
    ["forget", "--keep-last", "1"],
    ["prune", "--grace", "0h"],
    ["key", "list"],
    ["key", "add"],
    ["unlock", "--remove-all"],
    ["repair-index"],
]


def _ids(commands: list[list[str]]) -> list[str]:
    return [" ".join(command[:2]).replace("{", "").replace("}", "") for command in commands]


def assert_clear_error(result: CliResult, *words: str) -> str:
    """A non-zero exit, no traceback, exactly one non-empty stderr line starting 'error:' that
    contains every given word (case-insensitive); returns that line."""
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line\n{result.describe()}"
    line = lines[0]
    assert line.startswith("error: "), result.describe()
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} missing from the error\n{result.describe()}"
    return line


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small directory to back up."""
    root = tmp_path / "source"
    write_file(root / "a.txt", b"alpha\n")
    write_file(root / "sub" / "b.bin", bytes(range(256)) * 64)
    return root


def _fill(command: list[str], source: Path, target: Path) -> list[str]:
    return [part.format(source=source, target=target) for part in command]


def _run_unchanged(location: Path, command: list[str], **kwargs: object) -> CliResult:
    """Run a command and assert it changed nothing at location."""
    before = directory_listing(location)
    result = run_cli(*command, repo=location, **kwargs)  # type: ignore[arg-type]
    assert directory_listing(location) == before, f"the command wrote something\n{result.describe()}"
    return result


# --- wrong passphrase ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository (made by the CLI) with one snapshot, built once."""
    base = tmp_path_factory.mktemp("template")
    write_file(base / "data" / "file.txt", b"backed up\n")
    repo = base / "repo"
    ok(run_cli("init", repo=repo))
    ok(run_cli("backup", base / "data", repo=repo))
    return repo


@pytest.fixture
def repository(repository_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template repository."""
    repo = tmp_path / "repo"
    shutil.copytree(repository_template, repo)
    return repo


@pytest.mark.parametrize("command", OPENING_COMMANDS, ids=_ids(OPENING_COMMANDS))
def test_wrong_passphrase(repository: Path, source: Path, tmp_path: Path, command: list[str]) -> None:
    target = tmp_path / "restored"
    source_before = directory_listing(source)
    result = _run_unchanged(
        repository,
        _fill(command, source, target),
        password="not the passphrase",
        env={"BACKVAULT_NEW_PASSWORD": "another"},
    )
    assert_clear_error(result, "wrong passphrase")
    assert not target.exists()
    assert directory_listing(source) == source_before


# --- no repository at the location -----------------------------------------------------------


@pytest.mark.parametrize("command", OPENING_COMMANDS, ids=_ids(OPENING_COMMANDS))
def test_missing_repository_path(source: Path, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no-such-dir" / "repo"
    target = tmp_path / "restored"
    result = run_cli(*_fill(command, source, target), repo=missing, env={"BACKVAULT_NEW_PASSWORD": "another"})
    assert_clear_error(result, "no backvault repository", str(missing))
    assert not missing.parent.exists(), "the missing location must not be created"
    assert not target.exists()


@pytest.mark.parametrize("content", ["empty", "files"])
@pytest.mark.parametrize("command", OPENING_COMMANDS, ids=_ids(OPENING_COMMANDS))
def test_directory_that_is_not_a_repository(
    source: Path, tmp_path: Path, command: list[str], content: str
) -> None:
    location = tmp_path / "not-a-repo"
    location.mkdir()
    if content == "files":
        write_file(location / "notes.txt", b"my notes\n")
        write_file(location / "photos" / "cat.jpg", b"\xff\xd8\xff" + bytes(1000))
    target = tmp_path / "restored"
    result = _run_unchanged(
        location, _fill(command, source, target), env={"BACKVAULT_NEW_PASSWORD": "another"}
    )
    assert_clear_error(result, "no backvault repository", str(location))
    assert not target.exists()


def test_regular_file_as_repository(source: Path, tmp_path: Path) -> None:
    location = tmp_path / "a-file"
    location.write_bytes(b"not a directory\n")
    result = _run_unchanged(location, ["snapshots"])
    assert_clear_error(result, "no backvault repository", str(location))
    result = _run_unchanged(location, ["backup", str(source)])
    assert_clear_error(result, "no backvault repository", str(location))


# --- S3: a bucket that does not exist --------------------------------------------------------


@pytest.fixture
def s3_client(moto_endpoint: str) -> Iterator[object]:
    client = boto3.client("s3", endpoint_url=moto_endpoint, **_boto_credentials())
    try:
        yield client
    finally:
        client.close()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def _bucket_names(client: object) -> set[str]:
    return {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}  # type: ignore[attr-defined]


S3_COMMANDS = [
    ["init"],
    ["snapshots"],
    ["check"],
    ["backup", "{source}"],
    ["restore", "latest", "--target", "{target}"],
]


@pytest.mark.parametrize("command", S3_COMMANDS, ids=_ids(S3_COMMANDS))
def test_s3_bucket_that_does_not_exist(
    moto_endpoint: str, s3_client: object, source: Path, tmp_path: Path, command: list[str]
) -> None:
    bucket = f"bv-missing-{uuid.uuid4().hex[:12]}"
    target = tmp_path / "restored"
    result = run_cli(
        *_fill(command, source, target),
        repo=f"s3://{bucket}/backups",
        env={**AWS_ENV, "BACKVAULT_S3_ENDPOINT": moto_endpoint},
        timeout=120,
    )
    assert_clear_error(result, f"bucket '{bucket}' does not exist")
    assert bucket not in _bucket_names(s3_client), "the bucket must not be created"
    assert not target.exists()


def test_s3_init_on_a_non_empty_bucket(moto_endpoint: str, s3_client: object) -> None:
    bucket = f"bv-used-{uuid.uuid4().hex[:12]}"
    client = s3_client
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    try:
        client.put_object(Bucket=bucket, Key="backups/someone-elses-file", Body=b"hello")  # type: ignore[attr-defined]
        result = run_cli(
            "init",
            repo=f"s3://{bucket}/backups",
            env={**AWS_ENV, "BACKVAULT_S3_ENDPOINT": moto_endpoint},
            timeout=120,
        )
        assert_clear_error(result, "already contains")
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])  # type: ignore[attr-defined]
        assert [item["Key"] for item in listed] == ["backups/someone-elses-file"], result.describe()
    finally:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):  # type: ignore[attr-defined]
            client.delete_object(Bucket=bucket, Key=item["Key"])  # type: ignore[attr-defined]
        client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


# --- no passphrase ---------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["", None], ids=["empty", "unset"])
def test_no_passphrase_and_no_terminal_init(tmp_path: Path, password: str | None) -> None:
    location = tmp_path / "new-repo"
    result = run_cli("init", repo=location, password=password)
    assert_clear_error(result, "no passphrase", "BACKVAULT_PASSWORD", "--password-file")
    assert not location.exists()


@pytest.mark.parametrize("password", ["", None], ids=["empty", "unset"])
@pytest.mark.parametrize("command", OPENING_COMMANDS, ids=_ids(OPENING_COMMANDS))
def test_no_passphrase_and_no_terminal(
    repository: Path, source: Path, tmp_path: Path, command: list[str], password: str | None
) -> None:
    target = tmp_path / "restored"
    result = _run_unchanged(
        repository,
        _fill(command, source, target),
        password=password,
        env={"BACKVAULT_NEW_PASSWORD": "another"},
    )
    assert_clear_error(result, "no passphrase", "BACKVAULT_PASSWORD")
    assert not target.exists()


def test_unreadable_password_file(repository: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-password-file"
    result = _run_unchanged(repository, ["snapshots", "--password-file", str(missing)], password=None)
    assert_clear_error(result, "passphrase file", str(missing))


# --- init where something already is ---------------------------------------------------------


def test_init_on_an_existing_repository(repository: Path) -> None:
    result = _run_unchanged(repository, ["init"])
    assert_clear_error(result, "already contains", str(repository))
    result = _run_unchanged(repository, ["init"], password="a different passphrase")
    assert_clear_error(result, "already contains", str(repository))


def test_init_on_a_directory_with_other_files(tmp_path: Path) -> None:
    location = tmp_path / "home"
    write_file(location / "thesis.tex", b"\\documentclass{article}\n")
    write_file(location / "data" / "results.csv", b"a,b\n1,2\n")
    result = _run_unchanged(location, ["init"])
    assert_clear_error(result, "already contains", str(location))


# --- entry points ----------------------------------------------------------------------------


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    """`python -m backvault.cli.main repo ...` must run the CLI (it printed nothing and exited 0)."""
    location = tmp_path / "repo"
    completed = subprocess.run(
        [sys.executable, "-m", "backvault.cli.main", "repo", "init"],
        env=cli_env(location, PASSWORD),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "created repository" in completed.stdout, (completed.stdout, completed.stderr)
    assert (location / "config").is_file()


# --- backup options --------------------------------------------------------------------------


def test_backup_processes_must_be_a_positive_count(repository: Path, source: Path) -> None:
    result = _run_unchanged(repository, ["backup", "--processes", "0", str(source)])
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.describe()
    assert "'--processes'" in result.stderr and "greater than or equal to 1" in result.stderr, (
        result.describe()
    )
    one = ok(run_cli("backup", "--processes", "1", "--json", str(source), repo=repository))
    assert one.json()["summary"]["processes"] == 1
