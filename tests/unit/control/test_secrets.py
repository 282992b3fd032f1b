"""The master secret: where it comes from, and wrapping secrets so the catalog never holds them in clear."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from backvault.control.secrets import (
    MASTER_SECRET_VARIABLE,
    MasterSecret,
    SecretError,
    load_master_secret,
    new_master_secret_text,
)

SECRET = b"s3cr3t passphrase of a vault"


def test_wrap_and_unwrap_round_trip() -> None:
    master = MasterSecret(os.urandom(32))
    token = master.wrap(SECRET, "backup-vault/main/repository-passphrase")
    assert token.startswith(f"bvw1:{master.key_id}:")
    assert SECRET not in token.encode()
    assert master.unwrap(token, "backup-vault/main/repository-passphrase") == SECRET
    # A fresh nonce each time: wrapping twice never gives the same token.
    assert master.wrap(SECRET, "ctx") != master.wrap(SECRET, "ctx")


def test_the_context_binds_a_token_to_its_purpose_and_object() -> None:
    master = MasterSecret(os.urandom(32))
    token = master.wrap(SECRET, "backup-vault/main/repository-passphrase")
    with pytest.raises(SecretError, match="does not authenticate"):
        master.unwrap(token, "backup-vault/other/repository-passphrase")
    with pytest.raises(SecretError, match="does not authenticate"):
        master.unwrap(token, "api-secret-key/AKIA")


def test_damaged_tokens_are_refused() -> None:
    master = MasterSecret(os.urandom(32))
    token = master.wrap(SECRET, "ctx")
    body = bytearray(base64.urlsafe_b64decode(token.rsplit(":", 1)[1]))
    body[-1] ^= 1
    damaged = token.rsplit(":", 1)[0] + ":" + base64.urlsafe_b64encode(bytes(body)).decode()
    with pytest.raises(SecretError, match="does not authenticate"):
        master.unwrap(damaged, "ctx")
    with pytest.raises(SecretError, match="bad encoding"):
        master.unwrap(token.rsplit(":", 1)[0] + ":%%%", "ctx")
    with pytest.raises(SecretError, match="Not a wrapped secret"):
        master.unwrap("plain text", "ctx")


def test_another_master_secret_is_named_as_the_problem() -> None:
    token = MasterSecret(os.urandom(32)).wrap(SECRET, "ctx")
    with pytest.raises(SecretError, match=r"wrapped by master key .* this server's master key is"):
        MasterSecret(os.urandom(32)).unwrap(token, "ctx")


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_master_secret(data_dir, environ={})
    key_file = data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip())) == 32
    assert load_master_secret(data_dir, environ={}).key_id == first.key_id
    assert [path.name for path in data_dir.iterdir()] == ["master.key"]  # no temporary file left


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_master_secret(tmp_path, environ={})
    (tmp_path / "master.key").chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_master_secret(tmp_path, environ={})


def test_environment_variable_wins_over_the_key_file(tmp_path: Path) -> None:
    text = new_master_secret_text()
    from_environment = load_master_secret(tmp_path, environ={MASTER_SECRET_VARIABLE: text})
    assert from_environment.key_id == MasterSecret(base64.b64decode(text)).key_id
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "holds 5 bytes, expected 32"),
    ],
)
def test_bad_environment_secrets_are_explained(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        load_master_secret(tmp_path, environ={MASTER_SECRET_VARIABLE: value})


def test_repr_does_not_show_the_secret() -> None:
    raw = os.urandom(32)
    master = MasterSecret(raw)
    assert raw.hex() not in repr(master)
    assert base64.b64encode(raw).decode() not in repr(master)
