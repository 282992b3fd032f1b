"""Direct I/O (O_DIRECT): moving large data between memory and disk around the page cache.

On this project's VMs, every page the page cache takes for a buffered write or read is a
fresh page of the guest, which the host must back first: writing 1 GiB through the page
cache cost ~2 s of system CPU, with O_DIRECT ~0.1 s (docs/benchmarks.md). Packs are
fsynced before they are linked into place anyway, so caching them buys nothing; and a
restore should not push a machine's working set out of its cache.

O_DIRECT wants the memory, the file offset and the length aligned to the device's logical
block. ALIGNMENT (4 KiB) satisfies every common device; the memory comes from an anonymous
mmap, which is page aligned. Where a filesystem refuses O_DIRECT (tmpfs, some FUSE and
network filesystems) or a device wants more, the callers fall back to buffered I/O.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

ALIGNMENT = 4096
O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # 0: not Linux, never direct
# The errors that mean "not with O_DIRECT here": unsupported, or alignment not accepted.
_REFUSALS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def align_down(value: int) -> int:
    """value rounded down to a multiple of ALIGNMENT."""
    return value - value % ALIGNMENT


def align_up(value: int) -> int:
    """value rounded up to a multiple of ALIGNMENT."""
    return align_down(value + ALIGNMENT - 1)


def refused(error: OSError) -> bool:
    """Tell whether error means that this file or device cannot do direct I/O as asked."""
    return error.errno in _REFUSALS


def set_direct(fd: int, direct: bool) -> None:
    """Turn O_DIRECT on or off for an open descriptor (a file's unaligned tail goes buffered)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | O_DIRECT if direct else flags & ~O_DIRECT
    if wanted != flags:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)


def private_memory(size: int) -> mmap.mmap:
    """size bytes of page-aligned memory, of this process alone.

    Private: Python maps anonymous memory shared by default, and a child forked later
    (a backup's workers) would then write into its parent's pages.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class AlignedBuffer:
    """Page-aligned memory that one thread fills again and again.

    Its pages stay mapped: a restore that read each pack region into fresh bytes faulted
    them in page by page (40 % of its page faults).
    """

    def __init__(self) -> None:
        self._memory: mmap.mmap | None = None

    def take(self, size: int) -> memoryview:
        """size bytes of aligned memory; what earlier calls returned must no longer be in use."""
        if self._memory is None or len(self._memory) < size:
            # not closed: views of the old map keep it alive until they are released
            self._memory = private_memory(align_up(max(size, 1)))
        return memoryview(self._memory)[:size]


def write_direct(fd: int, data: memoryview, buffer: AlignedBuffer) -> None:
    """Write data at the start of the empty file fd (opened with O_DIRECT).

    The aligned part goes direct: from data itself when its memory is aligned (a pack
    builder's is), else from a copy in buffer (a memory copy costs a tenth of what the page
    cache does). The last partial block goes buffered. OSError as from os.write;
    refused(error) tells that the caller must write buffered instead.
    """
    aligned = align_down(len(data))
    if aligned:
        try:
            _write_all(fd, data[:aligned])
        except OSError as error:
            if not refused(error):
                raise
            # Refused for its memory, or for good: the aligned copy tells which.
            staged = buffer.take(aligned)
            try:
                staged[:] = data[:aligned]
                os.lseek(fd, 0, os.SEEK_SET)
                _write_all(fd, staged)
            finally:
                staged.release()
    if aligned < len(data):
        set_direct(fd, False)
        _write_all(fd, data[aligned:])


def _write_all(fd: int, view: memoryview) -> None:
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])
