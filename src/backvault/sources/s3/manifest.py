"""The layout of an S3 bucket snapshot, and its object manifest.

A bucket snapshot holds::

    bucket.json                  the bucket: name, region, tags, versioning, counts
    manifest/objects.jsonl       one JSON line per object (ObjectRecord)
    objects/KEY                  each object's body, under its key when the key is a usable path
    escaped/HASH                 bodies whose key is not (empty or '.'/'..' parts, a trailing '/',
                                 a name over 255 bytes, or a key that is both an object and a "folder")

The manifest maps every key to its path, so restore never guesses, and records what incremental
backups compare (ETag, size, LastModified) and what validation checks (sha256 of the body).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node
from backvault.sources.base import ConnectorError
from backvault.sources.streams import find_file, iter_files, open_content

FORMAT = 1
BUCKET_PATH = "bucket.json"
MANIFEST_PATH = "manifest/objects.jsonl"
_MAX_NAME_BYTES = 255


@dataclass
class ObjectRecord:
    """One object as it was backed up."""

    key: str
    path: str
    etag: str
    size: int
    last_modified: str  # ISO 8601 from the listing, what the next incremental backup compares
    sha256: str
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # CacheControl, ContentEncoding...
    tags: dict[str, str] = field(default_factory=dict)
    storage_class: str = ""

    def to_line(self) -> bytes:
        """One manifest line."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ObjectRecord:
        """Parse a manifest line's document (fields a later format adds are ignored)."""
        return cls(**{name: document[name] for name in _RECORD_FIELDS if name in document})

    def unchanged(self, etag: str, size: int, last_modified: str) -> bool:
        """True when the listing shows the same object version as this record."""
        return (self.etag, self.size, self.last_modified) == (etag, size, last_modified)


_RECORD_FIELDS = tuple(ObjectRecord.__dataclass_fields__)


class PathAllocator:
    """Chooses each object's path in the snapshot: its key when usable, else ``escaped/HASH``."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._directories: set[str] = set()

    def allocate(self, key: str) -> str:
        """Return a path for ``key`` that no earlier key got and that no tree rule refuses."""
        parts = key.split("/")
        usable = all(part not in ("", ".", "..") and len(part.encode()) <= _MAX_NAME_BYTES for part in parts)
        if usable:
            prefixes = ["objects/" + "/".join(parts[:end]) for end in range(1, len(parts))]
            path = "objects/" + key
            clash = path in self._files or path in self._directories
            clash = clash or any(prefix in self._files for prefix in prefixes)
            if not clash:
                self._files.add(path)
                self._directories.update(prefixes)
                return path
        path = "escaped/" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        self._files.add(path)
        return path


def sample_keys(keys: Iterable[str], size: int) -> set[str]:
    """A deterministic sample of ``size`` keys (the smallest hashes: uniform, same on every run)."""
    return set(heapq.nsmallest(size, keys, key=lambda key: hashlib.sha256(key.encode()).digest()))


def read_json(repository: Repository, snapshot: Snapshot, path: str) -> Any:
    """Load a small JSON document stored in the snapshot."""
    try:
        node = find_file(repository, snapshot, path)
    except KeyError:
        raise ConnectorError(
            f"Snapshot {snapshot.short_id} has no {path}: it is not an S3 bucket backup."
        ) from None
    with open_content(repository, node) as stream:
        return json.loads(stream.read())


def iter_records(repository: Repository, snapshot: Snapshot) -> Iterator[ObjectRecord]:
    """Yield the object records of a bucket snapshot in listing order."""
    try:
        node = find_file(repository, snapshot, MANIFEST_PATH)
    except KeyError:
        raise ConnectorError(
            f"Snapshot {snapshot.short_id} has no {MANIFEST_PATH}: it is not an S3 bucket backup."
        ) from None
    with open_content(repository, node) as stream:
        for line in stream:
            if line.strip():
                yield ObjectRecord.from_json(json.loads(line))


def content_nodes(repository: Repository, snapshot: Snapshot) -> dict[str, Node]:
    """Path -> file node of every object body in the snapshot."""
    return {
        path: node
        for path, node in iter_files(repository, snapshot)
        if path.startswith(("objects/", "escaped/"))
    }
