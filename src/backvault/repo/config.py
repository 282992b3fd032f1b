"""The repository config object: format version, repository id, chunker and packing parameters."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from backvault.repo.crypto import AuthenticationError, Sealer
from backvault.repo.errors import DamagedDataError, RepositoryError

REPOSITORY_FORMAT_VERSION = 1
CONFIG_KEY = "config"
DEFAULT_PACK_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters as passed to pyfastcdc (its mean chunk size is about avg + min)."""

    min_size: int = 512 * 1024
    avg_size: int = 512 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 1
    seed: int = 0  # per-repository gear-table seed, so cut points do not fingerprint content


@dataclass(frozen=True)
class RepositoryConfig:
    """Everything that must stay fixed for the life of a repository."""

    id: str
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression_level: int = 3
    pack_size: int = DEFAULT_PACK_SIZE

    @classmethod
    def new(cls, chunker: ChunkerParams | None = None, pack_size: int | None = None) -> RepositoryConfig:
        """A fresh config with a random id and a random chunker seed."""
        params = chunker or ChunkerParams(seed=int.from_bytes(os.urandom(4), "little") or 1)
        return cls(id=os.urandom(32).hex(), chunker=params, pack_size=pack_size or DEFAULT_PACK_SIZE)

    def to_object(self, sealer: Sealer) -> bytes:
        """Serialise: public version and id, everything else sealed under the master key."""
        inner = {
            "chunker": asdict(self.chunker),
            "compression_level": self.compression_level,
            "pack_size": self.pack_size,
        }
        sealed = sealer.seal(json.dumps(inner, sort_keys=True).encode(), _associated_data(self.id))
        document = {
            "version": REPOSITORY_FORMAT_VERSION,
            "id": self.id,
            "sealed": base64.b64encode(sealed).decode(),
        }
        return json.dumps(document, sort_keys=True, indent=1).encode()

    @classmethod
    def from_object(cls, data: bytes, sealer: Sealer) -> RepositoryConfig:
        """Parse and authenticate a config object."""
        try:
            document: dict[str, Any] = json.loads(data)
            version = document["version"]
            repository_id = str(document["id"])
            sealed = base64.b64decode(document["sealed"])
        except (ValueError, KeyError, TypeError) as error:
            raise DamagedDataError(CONFIG_KEY, f"unreadable config ({error})") from error
        if version != REPOSITORY_FORMAT_VERSION:
            raise RepositoryError(
                f"repository format version {version} is not supported by this backvault "
                f"(supports {REPOSITORY_FORMAT_VERSION}); upgrade backvault"
            )
        try:
            inner = json.loads(sealer.open(sealed, _associated_data(repository_id)))
        except AuthenticationError as error:
            raise DamagedDataError(CONFIG_KEY, "config failed authentication") from error
        return cls(
            id=repository_id,
            chunker=ChunkerParams(**inner["chunker"]),
            compression_level=int(inner["compression_level"]),
            pack_size=int(inner["pack_size"]),
        )


def _associated_data(repository_id: str) -> bytes:
    return b"backvault config " + repository_id.encode()
