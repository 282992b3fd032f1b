"""The server master secret, and wrapping of the secrets the catalog must hold (vault passphrases, keys).

The master secret (32 random bytes) comes from ``BACKVAULT_MASTER_SECRET`` (base64) or from
``DATA_DIR/master.key``, created with mode 0600 on first start. It never encrypts anything itself:
HKDF-SHA256 derives a wrapping key and a public key id from it. ``wrap`` seals with AES-256-GCM under
a random 96-bit nonce (safe far beyond the number of secrets a catalog will ever wrap), and the
associated data names the purpose and the object, so a token copied into another row or used for
another purpose fails to unwrap instead of yielding the wrong secret.

Token format: ``bvw1:<key id>:<urlsafe base64 of nonce || ciphertext || tag>``. The key id tells a
wrong master secret apart from a damaged token, and lets a later key rotation find what to rewrap.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_SECRET_VARIABLE = "BACKVAULT_MASTER_SECRET"
MASTER_KEY_FILE_NAME = "master.key"
MASTER_SECRET_BYTES = 32
TOKEN_PREFIX = "bvw1"
_NONCE_BYTES = 12
_TAG_BYTES = 16


class SecretError(Exception):
    """The master secret is missing or malformed, or a wrapped secret cannot be unwrapped."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"backvault " + purpose).derive(master)


class MasterSecret:
    """Wraps and unwraps secrets under a key derived from the server's master secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != MASTER_SECRET_BYTES:
            raise SecretError(f"The master secret must be {MASTER_SECRET_BYTES} bytes, got {len(secret)}.")
        self._aead = AESGCM(_derive(secret, b"wrapping key v1"))
        self.key_id = _derive(secret, b"key id v1")[:8].hex()

    def __repr__(self) -> str:
        return f"MasterSecret(key_id={self.key_id!r})"

    def wrap(self, secret: bytes, context: str) -> str:
        """Encrypt ``secret`` for the purpose named by ``context``; returns a printable token."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret, _associated_data(context))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{TOKEN_PREFIX}:{self.key_id}:{body}"

    def unwrap(self, token: str, context: str) -> bytes:
        """Decrypt a token made by ``wrap`` with the same ``context``, or raise SecretError."""
        prefix, _, rest = token.partition(":")
        key_id, _, body = rest.partition(":")
        if prefix != TOKEN_PREFIX or not key_id or not body:
            raise SecretError(f"Not a wrapped secret (expected {TOKEN_PREFIX}:KEYID:DATA) for {context}.")
        if key_id != self.key_id:
            raise SecretError(
                f"The secret for {context} was wrapped by master key {key_id}, but this server's master "
                f"key is {self.key_id}: start the server with the master secret it was created with."
            )
        try:
            raw = base64.b64decode(body.encode("ascii"), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise SecretError(f"The wrapped secret for {context} is damaged (bad encoding).")
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated_data(context))
        except (InvalidTag, ValueError):
            raise SecretError(
                f"The wrapped secret for {context} does not authenticate: it was damaged, or it belongs "
                "to another object or purpose."
            ) from None


def _associated_data(context: str) -> bytes:
    if not context:
        raise ValueError("a wrapping context naming the purpose is required")
    return b"backvault wrapped secret v1\x00" + context.encode("utf-8")


def load_master_secret(data_dir: Path, environ: Mapping[str, str] | None = None) -> MasterSecret:
    """Return the master secret from the environment, else from DATA_DIR/master.key (created if absent)."""
    environ = os.environ if environ is None else environ
    encoded = environ.get(MASTER_SECRET_VARIABLE, "").strip()
    if encoded:
        return MasterSecret(_decode(encoded, f"${MASTER_SECRET_VARIABLE}"))
    return MasterSecret(_read_or_create_key_file(Path(data_dir) / MASTER_KEY_FILE_NAME))


def new_master_secret_text() -> str:
    """Return a fresh master secret in the form BACKVAULT_MASTER_SECRET and master.key take."""
    return base64.b64encode(os.urandom(MASTER_SECRET_BYTES)).decode("ascii")


def _decode(encoded: str, where: str) -> bytes:
    try:
        secret = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SecretError(
            f"{where} is not valid base64; generate one with: openssl rand -base64 32"
        ) from None
    if len(secret) != MASTER_SECRET_BYTES:
        raise SecretError(
            f"{where} holds {len(secret)} bytes, expected {MASTER_SECRET_BYTES}; generate one with: "
            "openssl rand -base64 32"
        )
    return secret


def _read_or_create_key_file(path: Path) -> bytes:
    if path.exists():
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a complete temporary file (mkstemp creates it 0600), then hard-link it into place: link
    # refuses to replace, so of two servers starting at once exactly one key wins, and nobody ever
    # sees a half-written key file.
    descriptor, temporary = tempfile.mkstemp(prefix=".master.key.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(new_master_secret_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            _fsync_directory(path.parent)
    finally:
        os.unlink(temporary)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}); it holds the key to every "
            f"vault: run chmod 600 {path}"
        )
    return _decode(path.read_text(encoding="ascii").strip(), str(path))


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
