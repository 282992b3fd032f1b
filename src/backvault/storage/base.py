"""The object-store interface every storage backend implements.

The repository stores immutable, content-named objects ("data/ab/abcd...", "index/...",
"snapshots/...", "keys/...", "locks/...", "config"). A backend only has to store and
return bytes under a key; it never interprets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class StorageError(Exception):
    """A storage operation failed (after retries, where the backend retries)."""


class ObjectNotFoundError(StorageError):
    """The requested key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ObjectExistsError(StorageError):
    """A create-only write found the key already present."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object already exists: {key}")
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing knows about one object."""

    key: str
    size: int
    modified: float  # seconds since the epoch, as the backend reports it


class ObjectStore(Protocol):
    """Flat key -> bytes store. Keys use '/' as separator and never start with '/'.

    Every backend rejects invalid keys (empty, leading '/', empty, '.' or '..' segments,
    backslash, NUL, segments starting with '.tmp-') with ValueError before any I/O.
    """

    @property
    def location(self) -> str:
        """A human-readable location (path or s3:// URL) for messages."""
        ...

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key atomically: readers see the old object, or the whole new one."""
        ...

    def put_new(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key only if it does not exist yet, else raise ObjectExistsError."""
        ...

    def get(self, key: str) -> bytes:
        """Return the whole object, or raise ObjectNotFoundError."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return length bytes starting at offset, or raise ObjectNotFoundError.

        Fewer bytes come back if the object ends first (b"" at or past its end), so callers
        that need exactly length bytes must check the size. Negative arguments: ValueError.
        """
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Return size and modification time, or raise ObjectNotFoundError."""
        ...

    def exists(self, key: str) -> bool:
        """Tell whether key exists."""
        ...

    def delete(self, key: str) -> None:
        """Remove key; removing a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with prefix, in no particular order."""
        ...

    def close(self) -> None:
        """Release connections or handles held by the store."""
        ...


def read_ranges(store: ObjectStore, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Return store.get_range(key, offset, length) for each (offset, length), in order.

    A store with a get_ranges method of the same contract reads them together (LocalStore
    opens the file once); any other store is asked once per range. ObjectNotFoundError is
    raised once for the whole call.
    """
    get_ranges: Callable[[str, Sequence[tuple[int, int]]], list[bytes]] | None = getattr(
        store, "get_ranges", None
    )
    if get_ranges is not None:
        return get_ranges(key, ranges)
    return [store.get_range(key, offset, length) for offset, length in ranges]
