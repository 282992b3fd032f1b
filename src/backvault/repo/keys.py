"""Key objects: the master key wrapped by a passphrase through Argon2id.

A repository may hold several key objects (one per person or machine); any one of them
opens it. Key objects are stored under ``keys/<id>`` where id is the BLAKE3 of the object,
so a changed byte is detected before the passphrase is even tried.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from backvault.repo.crypto import AuthenticationError, MasterKey, Sealer

KEY_FORMAT_VERSION = 1
_ASSOCIATED_DATA = b"backvault key v1"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters, stored in each key object."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    @classmethod
    def for_new_key(cls) -> KdfParams:
        """Default costs; BACKVAULT_TEST_FAST_KDF=1 lowers them for test suites only."""
        if os.environ.get("BACKVAULT_TEST_FAST_KDF") == "1":
            return cls(iterations=1, lanes=1, memory_kib=1024)
        return cls()


def _derive(password: str, salt: bytes, params: KdfParams) -> bytes:
    kdf = Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(password.encode("utf-8"))


@dataclass(frozen=True)
class KeyInfo:
    """Public, unencrypted facts about a key object (shown by 'key list')."""

    id: str
    created: str
    hostname: str
    username: str


def make_key_object(master: MasterKey, password: str) -> bytes:
    """Serialise a new key object wrapping master under password."""
    if not password:
        raise ValueError("the passphrase must not be empty")
    params = KdfParams.for_new_key()
    salt = os.urandom(16)
    wrapping = _derive(password, salt, params)
    document: dict[str, Any] = {
        "version": KEY_FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
        "username": getpass.getuser(),
        "kdf": {
            "algorithm": "argon2id",
            "iterations": params.iterations,
            "lanes": params.lanes,
            "memory_kib": params.memory_kib,
            "salt": base64.b64encode(salt).decode(),
        },
        "wrapped": base64.b64encode(Sealer(wrapping).seal(master.secret, _ASSOCIATED_DATA)).decode(),
    }
    return json.dumps(document, sort_keys=True, indent=1).encode()


def parse_key_info(key_id: str, data: bytes) -> KeyInfo:
    """Read the public fields of a key object."""
    document = json.loads(data)
    return KeyInfo(key_id, document["created"], document["hostname"], document["username"])


def unwrap_key_object(data: bytes, password: str) -> MasterKey | None:
    """Return the master key if password opens this key object, else None."""
    document = json.loads(data)
    if document.get("version") != KEY_FORMAT_VERSION:
        raise ValueError(f"unsupported key object version {document.get('version')}")
    kdf = document["kdf"]
    params = KdfParams(kdf["iterations"], kdf["lanes"], kdf["memory_kib"])
    wrapping = _derive(password, base64.b64decode(kdf["salt"]), params)
    try:
        secret = Sealer(wrapping).open(base64.b64decode(document["wrapped"]), _ASSOCIATED_DATA)
    except AuthenticationError:
        return None
    return MasterKey(secret)
