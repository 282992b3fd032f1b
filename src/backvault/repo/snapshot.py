"""Snapshots (recovery points): small sealed manifests pointing at a root tree."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from backvault.repo.crypto import AuthenticationError, Sealer

SNAPSHOT_AAD = b"backvault snapshot"


@dataclass
class Snapshot:
    """One recovery point: what was saved, when, from where, and whether it is complete."""

    tree: str
    paths: list[str]
    hostname: str
    username: str
    time: datetime
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    partial: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def short_id(self) -> str:
        """The first 8 hex digits, as shown in listings."""
        return self.id[:8]

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (time as ISO 8601), including the id."""
        document = asdict(self)
        document["time"] = self.time.isoformat()
        return document

    def encode(self, sealer: Sealer) -> bytes:
        """Seal for storage (the id is the object's name, not part of it)."""
        document = self.to_json()
        del document["id"]
        return sealer.seal(json.dumps(document, sort_keys=True).encode(), SNAPSHOT_AAD)

    @classmethod
    def decode(cls, snapshot_id: str, data: bytes, sealer: Sealer) -> Snapshot:
        """Open a stored snapshot; ValueError if damaged."""
        try:
            document = json.loads(sealer.open(data, SNAPSHOT_AAD))
        except AuthenticationError as error:
            raise ValueError("snapshot failed authentication") from error
        document["time"] = datetime.fromisoformat(document["time"])
        return cls(id=snapshot_id, **document)
