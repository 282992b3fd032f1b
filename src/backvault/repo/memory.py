"""Process-wide allocator settings for the backup and restore data path (glibc only).

The data path allocates and frees buffers of one to sixteen MiB all the time (file
buffers, chunk copies, compressed and sealed blobs, packs). With glibc's defaults,
each thread that allocates concurrently gets its own arena (up to 8 per core), and
the threshold above which malloc uses mmap rises to 32 MiB after the first large free,
so those buffers end up in arena heaps that fragment and are not returned to the
system. Measured on the 1 GiB benchmark set, a first backup peaked at ~290 MiB RSS
with the defaults, ~200 MiB with two arenas and ~140 MiB when, in addition, every
allocation of 1 MiB or more is its own mapping, given back when freed. The threshold is
2 MiB, not 1: zstd's output buffer for a chunk is a little bigger than the chunk, chunks
average about 1 MiB, and each such buffer made a fresh mapping faulted in page by page
(a first backup of the benchmark set: ~186k page faults with 1 MiB, ~161k with 2 MiB,
peak RSS within 2 MiB of each other).

Fixing the mmap threshold also fixes glibc's trim threshold at its 128 KiB default, so the
smaller buffers (chunks under 1 MiB, small files, compressed blobs) were given back to the
system and faulted in again all the time: half of a first backup's 540k page faults. An
8 MiB trim threshold keeps them for reuse (~290k faults, ~0.6 s less system time, ~10 MiB
more RSS).
"""

from __future__ import annotations

import ctypes
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024
_lock = threading.Lock()
_applied = False


def tune_malloc() -> bool:
    """Cap glibc's arenas and fix its mmap and trim thresholds for this process (once); True when applied."""
    global _applied
    with _lock:
        if _applied:
            return True
        try:
            # The interpreter's own symbols include its C library's; only glibc has these settings.
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        _applied = all(
            mallopt(option, value)
            for option, value in (
                (_M_ARENA_MAX, ARENAS),
                (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            )
        )
        return _applied
