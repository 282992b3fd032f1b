"""Restore a snapshot's trees into a directory.

The restore plans first (creating directories, links and special files while it
walks the trees, and noting every file position each chunk must go to), then reads
each needed chunk once, in pack order, and writes it to every position that needs
it. All-zero chunks are skipped so sparse files stay sparse. Everything is created
relative to an open parent directory with O_NOFOLLOW, so a path longer than PATH_MAX
works and a crafted snapshot cannot write outside the target.

Ownership is restored by numeric uid/gid (like ``tar --numeric-owner``), and only
when running as root; the stored user and group names are informational.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.filesystem.metadata import write_xattrs
from backvault.sources.filesystem.restore_plan import Directories, Planner, RestoredFile, display

__all__ = ["RestoreProgress", "RestoreResult", "restore_snapshot"]

_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILES = 64  # write descriptors kept open: big files get many chunks in a row
_PROGRESS_INTERVAL = 0.25
_BLOCK = 4096  # the usual filesystem block: the unit in which holes can be kept
_ZERO_BLOCK = bytes(_BLOCK)


@dataclass
class RestoreResult:
    """What a restore did; errors name each path (as in the snapshot) that was not restored."""

    files_restored: int = 0  # hard links count as files
    bytes_written: int = 0  # bytes actually written: zero runs left as holes are not counted
    errors: list[tuple[str, str]] = field(default_factory=list)
    dirs_restored: int = 0
    others_restored: int = 0


@dataclass
class RestoreProgress:
    """Progress of a restore, passed to the progress callback."""

    files: int
    files_total: int
    bytes_written: int
    bytes_total: int
    errors: int
    elapsed: float


def _is_zero(data: bytes) -> bool:
    """Tell whether a chunk is all zero bytes (checking both ends first, as real data rarely is)."""
    return not data or (data[0] == 0 and data[-1] == 0 and data.count(0) == len(data))


def data_ranges(data: bytes, offset: int) -> list[tuple[int, int]]:
    """Return the (start, end) ranges of data worth writing at offset, leaving out zero blocks.

    A chunk can be mostly zeros (the start of a sparse file is cut into one 8 MiB chunk);
    skipping its zero filesystem blocks leaves them as holes in the pre-sized file.
    """
    if _ZERO_BLOCK not in data:
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


class _Writer:
    """Writes chunk data into planned files and finishes each file when its last chunk arrives."""

    def __init__(
        self, planner: Planner, result: RestoreResult, progress: Callable[[RestoreProgress], None] | None
    ):
        self.planner = planner
        self.directories: Directories = planner.directories
        self.result = result
        self.progress = progress
        self.open_files: OrderedDict[int, tuple[RestoredFile, int]] = OrderedDict()
        self.as_root = os.geteuid() == 0
        self.started = time.monotonic()
        self.last_progress = 0.0

    def report(self, force: bool = False) -> None:
        """Call the progress callback, throttled."""
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_progress < _PROGRESS_INTERVAL:
            return
        self.last_progress = now
        planner, result = self.planner, self.result
        self.progress(
            RestoreProgress(
                result.files_restored,
                planner.file_count,
                result.bytes_written,
                planner.byte_count,
                len(result.errors),
                now - self.started,
            )
        )

    def _create(self, item: RestoredFile) -> int:
        """Create the file empty at its final size (holes where nothing is written)."""
        parent = self.directories.fd(item.directory)
        flags = _WRITE_FLAGS | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(item.node.name, flags, 0o600, dir_fd=parent)
        except FileExistsError:
            self.directories.remove(item.directory, item.node.name)
            fd = os.open(item.node.name, flags, 0o600, dir_fd=parent)
        item.created = True
        try:
            os.ftruncate(fd, item.node.size)
        except OSError:
            os.close(fd)
            raise
        return fd

    def descriptor(self, item: RestoredFile) -> int:
        """Return an open write descriptor for item, creating the file on first use."""
        key = id(item)
        cached = self.open_files.get(key)
        if cached is not None:
            self.open_files.move_to_end(key)
            return cached[1]
        if item.created:
            fd = os.open(item.node.name, _WRITE_FLAGS, dir_fd=self.directories.fd(item.directory))
        else:
            fd = self._create(item)
        self.open_files[key] = (item, fd)
        if len(self.open_files) > _OPEN_FILES:
            _, (_, oldest) = self.open_files.popitem(last=False)
            os.close(oldest)
        return fd

    def write(self, item: RestoredFile, offset: int, data: bytes) -> None:
        """Write data at offset into item, skipping zero blocks; an OS error marks the file failed."""
        if item.failed is not None:
            return
        try:
            fd = self.descriptor(item)
            for start, end in data_ranges(data, offset):
                view = memoryview(data)[start:end]
                position = offset + start
                while view:
                    written = os.pwrite(fd, view, position)
                    view, position = view[written:], position + written
                self.result.bytes_written += end - start
        except OSError as error:
            item.failed = f"cannot write: {error.strerror}"

    def position_done(self, item: RestoredFile) -> None:
        """Count down item's pending chunks and finish it after the last one."""
        item.remaining -= 1
        if item.remaining <= 0:
            self.finish(item)

    def finish(self, item: RestoredFile) -> None:
        """Apply metadata and hard links to a fully written file, or remove it if it failed."""
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
        for directory, name in item.aliases:
            self.planner.link(item, directory, name)
        self.report()

    def _apply(self, fd: int, item: RestoredFile) -> None:
        node = item.node
        if self.as_root:
            os.fchown(fd, node.uid, node.gid)
        # After chown, which clears setuid/setgid bits.
        os.fchmod(fd, node.mode)
        for problem in write_xattrs(fd, node.xattrs):
            self.result.errors.append((item.display, problem))
        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))

    def _discard(self, item: RestoredFile) -> None:
        """Remove a file that could not be restored completely and report it and its hard links."""
        if item.created:
            # Already gone, or its directory is: nothing left to clean up.
            with contextlib.suppress(OSError):
                os.unlink(item.node.name, dir_fd=self.directories.fd(item.directory))
        assert item.failed is not None
        self.result.errors.append((item.display, item.failed))
        for directory, name in item.aliases:
            self.result.errors.append((display(directory + b"/" + name if directory else name), item.failed))

    def close(self) -> None:
        """Close any descriptor left open (only after an exception)."""
        for _, fd in self.open_files.values():
            os.close(fd)
        self.open_files.clear()


def _write_chunks(repo: Repository, planner: Planner, writer: _Writer) -> None:
    """Fetch each needed chunk once and write it everywhere it belongs."""
    for chunk_id, data in repo.iter_chunks(list(planner.positions)):
        positions = planner.positions.pop(chunk_id)
        if isinstance(data, DamagedDataError):
            for item, _ in positions:
                if item.failed is None:
                    item.failed = f"damaged chunk {chunk_id} in {data.object_key}: {data.reason}"
                writer.position_done(item)
            continue
        if _is_zero(data):
            for item, _ in positions:
                writer.position_done(item)
            continue
        for item, offset in positions:
            writer.write(item, offset, data)
            writer.position_done(item)
    # Chunks iter_chunks did not yield (should not happen) leave files unfinished: fail them.
    for chunk_id, positions in planner.positions.items():
        for item, _ in positions:
            if item.failed is None:
                item.failed = f"chunk {chunk_id} was not delivered by the repository"
            writer.position_done(item)


def restore_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    target: str,
    *,
    includes: Sequence[str] = (),
    progress: Callable[[RestoreProgress], None] | None = None,
) -> RestoreResult:
    """Restore snapshot (or only the included paths) below target; errors are collected, not raised."""
    os.makedirs(target, exist_ok=True)
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    result = RestoreResult()
    directories = Directories(target_fd)
    planner = Planner(repo, directories, result.errors)
    writer = _Writer(planner, result, progress)
    planner.finish_file = writer.finish
    lock = repo.lock_and_refresh()  # a concurrent prune must not sweep the packs we read
    try:
        planner.plan(snapshot.tree, includes)
        _write_chunks(repo, planner, writer)
        result.dirs_restored = planner.apply_directory_metadata()
        result.others_restored = planner.others
        result.files_restored += planner.linked
    finally:
        lock.release()
        writer.close()
        directories.close()
    writer.report(force=True)
    return result
