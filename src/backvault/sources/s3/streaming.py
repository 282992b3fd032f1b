"""Readers that sit between a source and ``StreamSnapshot``: progress heartbeats, hashing, generators.

``StreamSnapshot.add_stream`` reports progress only when a stream ends; a long object body, Redis
export or RDB transfer must renew the job's lease while it is being read, so these readers call the
heartbeat every few seconds from inside ``readinto``. A heartbeat that raises ``ConnectorStopped``
therefore stops the backup mid-stream, before anything is committed.

(Used by the S3, DynamoDB and Redis connectors; generic enough to move to ``sources/`` later.)
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

# How often a long read renews the job's lease.
HEARTBEAT_SECONDS = 2.0
_READ_SIZE = 1024 * 1024


class ProgressReader(io.RawIOBase):
    """Reads from ``source`` while hashing (sha256) and calling ``progress(base + bytes so far)``."""

    def __init__(
        self,
        source: Any,
        progress: Callable[[int], None],
        *,
        base: int = 0,
        interval: float | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._progress = progress
        self._base = base
        self._interval = HEARTBEAT_SECONDS if interval is None else interval
        self._last_beat = time.monotonic()
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the source; 0 at the end."""
        view = memoryview(buffer).cast("B")
        # Small reads, so that progress is reported while one large buffer is being filled.
        data = self._source.read(min(len(view), _READ_SIZE))
        count = len(data)
        view[:count] = data
        if count:
            self.sha256.update(data)
            self.bytes_read += count
        now = time.monotonic()
        if now - self._last_beat >= self._interval:
            self._last_beat = now
            self._progress(self._base + self.bytes_read)
        return count


class IteratorReader(io.RawIOBase):
    """A readable binary stream over an iterator of byte strings (a generated export)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        super().__init__()
        self._pieces: Iterator[bytes] = iter(pieces)
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the next pieces; 0 at the end."""
        while not self._buffer:
            try:
                self._buffer = memoryview(next(self._pieces))
            except StopIteration:
                return 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def buffered(raw: io.RawIOBase) -> BinaryIO:
    """Wrap a raw reader in a 1 MiB buffer, as the chunker reads in large blocks."""
    return io.BufferedReader(raw, buffer_size=1 << 20)


def read_exactly(stream: BinaryIO, count: int) -> bytes:
    """Read ``count`` bytes or raise EOFError naming how many were missing."""
    data = stream.read(count)
    if len(data) != count:
        raise EOFError(f"stream ended {count - len(data)} bytes early")
    return data
