"""ClaimTable: which process of one backup stores a new blob, so forked workers dedup together.

A backup that walks in several processes (sources/filesystem/subtrees.py) gives each its own
pack builder. Before a process encodes a blob that the index does not know, it claims the
blob's id here; only the first claim wins, so a chunk two workers meet (duplicate files in
two subtrees) is stored once. The table lives in anonymous shared memory created before the
workers are forked, guarded by one process-shared lock.

It keeps the first 16 bytes of each id (a 128-bit prefix of a keyed BLAKE3 hash: two
different blobs agreeing on it is not a practical concern). When the table is full, claims
always win: blobs may then be stored twice, which the index and prune handle like two
concurrent backups storing one blob, but never once too few.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct

_KEY = 16
_HEADER = struct.Struct("<Q")  # slots in use
_EMPTY = bytes(_KEY)


class ClaimTable:
    """An open-addressing set of blob id prefixes shared by forked processes."""

    def __init__(self, slots: int = 1 << 20) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._mask = slots - 1
        self._limit = slots * 3 // 4  # beyond this, probing gets slow: stop claiming
        # An anonymous mapping is MAP_SHARED: forked children see each other's writes.
        self._memory = mmap.mmap(-1, _HEADER.size + slots * _KEY)
        lock = multiprocessing.get_context("fork").Lock()
        self._lock = lock  # keeps the semaphore alive
        # Called directly: `with lock` adds two Python calls to every claim (one per new blob).
        self._acquire, self._release = lock.acquire, lock.release

    def claim(self, blob_id: bytes) -> bool:
        """Record blob_id; True when this call is the first to claim it (or the table is full)."""
        key = blob_id[:_KEY]
        if key == _EMPTY:
            return True
        memory, mask = self._memory, self._mask
        slot = int.from_bytes(blob_id[_KEY : _KEY + 8], "little") & mask
        self._acquire()
        try:
            while True:
                start = _HEADER.size + slot * _KEY
                current = memory[start : start + _KEY]
                if current == key:
                    return False
                if current == _EMPTY:
                    (used,) = _HEADER.unpack_from(memory, 0)
                    if used >= self._limit:
                        return True
                    memory[start : start + _KEY] = key
                    _HEADER.pack_into(memory, 0, used + 1)
                    return True
                slot = (slot + 1) & mask
        finally:
            self._release()

    def close(self) -> None:
        self._memory.close()
