"""Writing restored files: one batch of planned files, in this process or in a worker process.

A batch lists files (their tree nodes) and where each chunk they need is stored. Its
chunks are read once each, in pack order, and written to every position that needs
them; a file is finished (metadata applied) when its last chunk arrives. All-zero
blocks are skipped so sparse files stay sparse.

Every system call per file counts (a restore creates tens of thousands): a file is
extended to its size only when its data stops short of it, created with its final mode
when nothing can take that away before it is complete, and chowned only when its owner
is not already right.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backvault.repo.blob import BlobCodec
from backvault.repo.chunk_reader import PackReads, read_located
from backvault.repo.errors import DamagedDataError
from backvault.repo.index import Location
from backvault.repo.tree import Node
from backvault.sources.filesystem.metadata import write_xattrs
from backvault.sources.filesystem.restore_direct import DirectFile, DirectWrites
from backvault.sources.filesystem.restore_plan import Directories, RestoredFile
from backvault.storage import direct_io
from backvault.storage.base import ObjectStore

_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILES = 64  # write descriptors kept open: big files get many chunks in a row
_BLOCK = 4096  # the usual filesystem block: the unit in which holes can be kept
_ZERO_BLOCK = bytes(_BLOCK)
# Searched for first: looking for a 4 KiB needle costs ~2 us of set-up per chunk, a
# 64-byte one almost nothing, and data without such a run cannot hold a zero block.
_ZERO_RUN = bytes(64)
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


@dataclass
class RestoreResult:
    """What a restore did; errors name each path (as in the snapshot) that was not restored."""

    files_restored: int = 0  # hard links count as files
    bytes_written: int = 0  # bytes actually written: zero runs left as holes are not counted
    errors: list[tuple[str, str]] = field(default_factory=list)
    dirs_restored: int = 0
    others_restored: int = 0


@dataclass
class FileJob:
    """One regular file to restore: where it goes and its tree node (content = chunk ids)."""

    directory: bytes
    node: Node
    display: str
    token: int = -1  # >= 0: a hard-link primary; the planner must hear if it fails
    new_gid: int | None = None  # the group the file gets when created (None: unknown)

    def __reduce__(self) -> tuple[Callable[..., FileJob], tuple[Any, ...]]:
        """Pickle only what a worker uses of the node: half the bytes and time of all of it."""
        node = self.node
        fields = (node.name, node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns, node.size)
        return _file_job, (
            self.directory,
            self.display,
            self.token,
            self.new_gid,
            *fields,
            node.content,
            node.xattrs,
        )


def _file_job(
    directory: bytes,
    display: str,
    token: int,
    new_gid: int | None,
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    atime_ns: int,
    mtime_ns: int,
    size: int,
    content: list[str],
    xattrs: dict[str, bytes],
) -> FileJob:
    """Rebuild a FileJob unpickled in a worker (see FileJob.__reduce__)."""
    node = Node(
        name,
        "file",
        mode,
        uid,
        gid,
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        size=size,
        content=content,
        xattrs=xattrs,
    )
    return FileJob(directory, node, display, token, new_gid)


@dataclass
class Batch:
    """Files restored together, and the stored locations of every chunk they need."""

    files: list[FileJob] = field(default_factory=list)
    locations: dict[str, list[Location]] = field(default_factory=dict)
    size: int = 0  # bytes of file content


@dataclass
class BatchResult:
    """What one batch did, sent back to the planning process."""

    files_restored: int = 0
    bytes_written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # token -> why that hard-link primary failed
    directories: int = 0  # directories whose metadata a worker applied (see restore_workers.py)


def process_umask() -> int | None:
    """This process's umask, read without changing it (other threads may be creating files).

    None when it cannot be read: files are then created private and chmodded.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_zero(data: bytes) -> bool:
    """Tell whether a chunk is all zero bytes (checking both ends first, as real data rarely is)."""
    return not data or (data[0] == 0 and data[-1] == 0 and data.count(0) == len(data))


def data_ranges(data: bytes, offset: int) -> list[tuple[int, int]]:
    """Return the (start, end) ranges of data worth writing at offset, leaving out zero blocks.

    A chunk can be mostly zeros (the start of a sparse file is cut into one 8 MiB chunk);
    skipping its zero filesystem blocks leaves them as holes in the pre-sized file.
    """
    if _ZERO_RUN not in data or _ZERO_BLOCK not in data:
        return [(0, len(data))]
    ranges: list[tuple[int, int]] = []
    length = len(data)
    start = 0
    # Blocks are aligned to the file offset, which is what the filesystem allocates.
    end = min(length, _BLOCK - offset % _BLOCK)
    while start < length:
        if data.count(0, start, end) != end - start:
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        start, end = end, min(length, end + _BLOCK)
    return ranges


@dataclass
class BatchMemory:
    """What a process keeps from batch to batch: where packs are read, how big files are written."""

    reads: PackReads = field(default_factory=PackReads)
    writes: DirectWrites = field(default_factory=DirectWrites)


class FileWriter:
    """Writes chunk data into planned files and finishes each file when its last chunk arrives."""

    def __init__(
        self, directories: Directories, result: RestoreResult, umask: int | None, direct: DirectWrites
    ) -> None:
        self.directories = directories
        self.result = result
        self.umask = umask  # of this process; None: unknown
        self.direct = direct
        self.open_files: OrderedDict[int, tuple[RestoredFile, int]] = OrderedDict()
        self.euid = os.geteuid()
        self.as_root = self.euid == 0

    def _needs_chown(self, item: RestoredFile) -> bool:
        """Tell whether item's owner must be set (only root restores owners)."""
        node = item.node
        return self.as_root and (item.new_gid is None or (node.uid, node.gid) != (self.euid, item.new_gid))

    def _can_create_final(self, item: RestoredFile) -> bool:
        """Tell whether item can be created with its final mode instead of chmodded at the end.

        Only when its owner is already right: the mode must not grant anything to another
        owner or group before the content is complete, and setuid/setgid bits must follow a
        chown (which clears them). Not with bits the umask or a default ACL would take away
        (or sticky bits), nor, unless we are root, without owner write permission (an evicted
        descriptor is reopened for writing).
        """
        mode = item.node.mode
        return (
            item.new_gid is not None
            and self.umask is not None
            and not mode & (_SPECIAL_BITS | self.umask)
            and (self.as_root or bool(mode & stat.S_IWUSR))
            and not self._needs_chown(item)
        )

    def _create(self, item: RestoredFile) -> int:
        """Create the file empty, with its final mode if it can be (else private until finished)."""
        if self.direct.wanted(item.node.size):
            item.direct = DirectFile(item.node.size)
        flags = _WRITE_FLAGS | os.O_CREAT | os.O_EXCL
        final = self._can_create_final(item)
        mode = item.node.mode if final else 0o600
        try:
            fd = self._open(item, flags, mode)
        except FileExistsError:
            self.directories.remove(item.directory, item.node.name)
            fd = self._open(item, flags, mode)
        item.created = True
        item.mode_set = final
        return fd

    def descriptor(self, item: RestoredFile) -> int:
        """Return an open write descriptor for item, creating the file on first use."""
        key = id(item)
        cached = self.open_files.get(key)
        if cached is not None:
            self.open_files.move_to_end(key)
            return cached[1]
        fd = self._open(item, _WRITE_FLAGS) if item.created else self._create(item)
        self.open_files[key] = (item, fd)
        if len(self.open_files) > _OPEN_FILES:
            _, (_, oldest) = self.open_files.popitem(last=False)
            os.close(oldest)
        return fd

    def _open(self, item: RestoredFile, flags: int, mode: int = 0o600) -> int:
        """Open item in its directory, with O_DIRECT while it is written direct."""
        parent = self.directories.fd(item.directory)
        if item.direct is not None:
            try:
                return os.open(item.node.name, flags | direct_io.O_DIRECT, mode, dir_fd=parent)
            except OSError as error:
                if not direct_io.refused(error):
                    raise
                self.direct.enabled = False  # the target's filesystem does not take O_DIRECT
                item.direct = None
                if flags & os.O_EXCL:  # ours if it exists: some kernels create the file, then refuse
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.node.name, dir_fd=parent)
        return os.open(item.node.name, flags, mode, dir_fd=parent)

    def write(self, item: RestoredFile, offset: int, data: bytes) -> None:
        """Write data at offset into item, skipping zero blocks; an OS error marks the file failed."""
        if item.failed is not None:
            return
        try:
            fd = self.descriptor(item)
            if item.direct is not None and self._write_direct(item, fd, offset, data):
                return
            for start, end in data_ranges(data, offset):
                view = memoryview(data)[start:end]
                position = offset + start
                while view:
                    written = os.pwrite(fd, view, position)
                    view, position = view[written:], position + written
                self.result.bytes_written += end - start
                item.data_end = max(item.data_end, offset + end)
        except OSError as error:
            item.failed = f"cannot write: {error.strerror}"

    def _write_direct(self, item: RestoredFile, fd: int, offset: int, data: bytes) -> bool:
        """Write data with O_DIRECT; False when refused (item is then written buffered)."""
        assert item.direct is not None
        try:
            count, end = item.direct.write(fd, offset, data, data_ranges, self.direct.buffer)
        except OSError as error:
            if not direct_io.refused(error):
                raise
            self._stop_direct(item, fd)
            return False
        self.result.bytes_written += count
        item.data_end = max(item.data_end, end)
        return True

    def _finish_direct(self, fd: int, item: RestoredFile) -> None:
        """Write the blocks a direct file still holds (item.failed when that fails)."""
        assert item.direct is not None
        try:
            count, end = item.direct.finish(fd, self.direct.buffer)
        except OSError as error:
            if direct_io.refused(error):
                self._stop_direct(item, fd)
            else:
                item.failed = f"cannot write: {error.strerror}"
            return
        self.result.bytes_written += count
        item.data_end = max(item.data_end, end)

    def _stop_direct(self, item: RestoredFile, fd: int) -> None:
        """After a refused direct write: item, and every file after it, through the page cache."""
        assert item.direct is not None
        self.direct.enabled = False
        item.direct.spill(fd)
        item.direct = None
        item.data_end = 0  # the pieces reach anywhere: the file is extended to its size at the end

    def position_done(self, item: RestoredFile) -> None:
        """Count down item's pending chunks and finish it after the last one."""
        item.remaining -= 1
        if item.remaining <= 0:
            self.finish(item)

    def finish(self, item: RestoredFile) -> None:
        """Apply metadata to a fully written file, or remove it if it failed."""
        cached = self.open_files.pop(id(item), None)
        fd = cached[1] if cached is not None else None
        try:
            if item.failed is None:
                if fd is None:
                    fd = self.descriptor(item)
                    self.open_files.pop(id(item))
                self._apply(fd, item)
        except OSError as error:
            item.failed = f"cannot restore metadata: {error.strerror}"
        finally:
            if fd is not None:
                os.close(fd)
        item.finished = True
        if item.failed is not None:
            self._discard(item)
            return
        self.result.files_restored += 1

    def _apply(self, fd: int, item: RestoredFile) -> None:
        node = item.node
        if item.direct is not None:
            self._finish_direct(fd, item)
            if item.failed is not None:
                return
        if item.data_end < node.size:  # trailing zeros were left out: they become a hole
            os.ftruncate(fd, node.size)
        if self._needs_chown(item):
            os.fchown(fd, node.uid, node.gid)
        if not item.mode_set:
            os.fchmod(fd, node.mode)  # after chown, which clears setuid/setgid bits
        for problem in write_xattrs(fd, node.xattrs):
            self.result.errors.append((item.display, problem))
        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))

    def _discard(self, item: RestoredFile) -> None:
        """Remove a file that could not be restored completely and report it (links are the planner's)."""
        if item.created:
            # Already gone, or its directory is: nothing left to clean up.
            with contextlib.suppress(OSError):
                os.unlink(item.node.name, dir_fd=self.directories.fd(item.directory))
        assert item.failed is not None
        self.result.errors.append((item.display, item.failed))

    def close(self) -> None:
        """Close any descriptor left open (only after an exception)."""
        for _, fd in self.open_files.values():
            os.close(fd)
        self.open_files.clear()


def run_batch(
    store: ObjectStore,
    codec: BlobCodec,
    directories: Directories,
    batch: Batch,
    umask: int | None,
    memory: BatchMemory | None = None,
) -> BatchResult:
    """Restore every file of a batch: fetch each chunk once and write it everywhere it belongs.

    umask: this process's (None: unknown); memory: what a worker keeps from batch to batch.
    """
    memory = memory or BatchMemory()
    result = RestoreResult()
    writer = FileWriter(directories, result, umask, memory.writes)
    positions: dict[str, list[tuple[RestoredFile, int]]] = {}
    tokens: list[tuple[int, RestoredFile]] = []
    empty: list[RestoredFile] = []
    for job in batch.files:
        item = RestoredFile(
            job.directory, job.node, job.display, remaining=len(job.node.content), new_gid=job.new_gid
        )
        if job.token >= 0:
            tokens.append((job.token, item))
        offset = 0
        for chunk_id in job.node.content:
            positions.setdefault(chunk_id, []).append((item, offset))
            offset += batch.locations[chunk_id][0].raw_length
        if not job.node.content:
            empty.append(item)
    try:
        for item in empty:
            writer.finish(item)
        for chunk_id, data in read_located(store, codec, batch.locations, memory.reads):
            targets = positions.pop(chunk_id)
            if isinstance(data, DamagedDataError):
                for item, _ in targets:
                    if item.failed is None:
                        item.failed = f"damaged chunk {chunk_id} in {data.object_key}: {data.reason}"
                    writer.position_done(item)
                continue
            zero = is_zero(data)
            for item, offset in targets:
                if not zero:
                    writer.write(item, offset, data)
                writer.position_done(item)
        # Chunks the reader did not yield (should not happen) leave files unfinished: fail them.
        for chunk_id, targets in positions.items():
            for item, _ in targets:
                if item.failed is None:
                    item.failed = f"chunk {chunk_id} was not delivered by the repository"
                writer.position_done(item)
    finally:
        writer.close()
    failed = {token: item.failed for token, item in tokens if item.failed is not None}
    return BatchResult(result.files_restored, result.bytes_written, result.errors, failed)
