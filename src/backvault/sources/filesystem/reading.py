"""Opening and reading what the backup walks (without touching atime), and the file read queue."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem.metadata import read_xattrs

_NOATIME = getattr(os, "O_NOATIME", 0)
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
# O_NONBLOCK: a file swapped for a FIFO after lstat must not hang the backup.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Files smaller than this are read by the walking thread. Each one is a single blob whose
# cost is Python overhead under the GIL; handing it to a worker only adds GIL contention.
INLINE_SIZE = 512 * 1024


@dataclass
class FileContent:
    """What a worker read from one file."""

    chunks: list[str]
    size: int
    stat: os.stat_result
    xattrs: dict[str, bytes] = field(default_factory=dict)


class ReadDone:
    """A file the walking thread has read already: what a Future would hold, without the
    lock a Future creates (~5 us each, for tens of thousands of small files)."""

    __slots__ = ("_content", "_error")

    def __init__(self, content: FileContent | None, error: OSError | None) -> None:
        self._content = content
        self._error = error

    def result(self) -> FileContent:
        if self._error is not None:
            raise self._error
        assert self._content is not None
        return self._content


# A file queued for reading: done at once (small files) or on a worker thread.
FileRead = Future[FileContent] | ReadDone


class ChangedTypeError(OSError):
    """The entry stopped being a regular file between lstat and open."""


def open_noatime(name: bytes, flags: int, dir_fd: int | None) -> int:
    """Open without touching atime when allowed (owner or root), so backups do not change the tree."""
    if _NOATIME:
        try:
            return os.open(name, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError as error:
            if error.errno != errno.EPERM:
                raise
    return os.open(name, flags, dir_fd=dir_fd)


def save_file_content(writer: BackupWriter, dir_fd: int | None, name: bytes) -> FileContent:
    """Read one regular file into the repository (runs on a worker thread)."""
    fd = open_noatime(name, FILE_FLAGS, dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChangedTypeError(errno.EINVAL, "changed type during backup")
        attributes = read_xattrs(fd)
        chunks, size = writer.save_fd(fd, st.st_size)
    finally:
        os.close(fd)
    return FileContent(chunks, size, st, attributes)


def list_directory(fd: int) -> list[bytes]:
    """Return the entry names of an open directory, sorted by raw bytes."""
    # What os.fsencode does, without its per-name call (listdir of an fd gives str names).
    return sorted([name.encode(_FS_ENCODING, _FS_ERRORS) for name in os.listdir(fd)])


def describe(error: OSError) -> str:
    """Say why an item could not be backed up."""
    if isinstance(error, FileNotFoundError):
        return "vanished during backup (no such file or directory)"
    return error.strerror or str(error)


class FileQueue:
    """Reads files into the repository: big ones on worker threads, small ones right away."""

    def __init__(self, writer: BackupWriter, pool: ThreadPoolExecutor, threads: int) -> None:
        self.writer = writer
        self.pool = pool
        # Bounds queued work so a huge directory does not pile up thousands of futures.
        self.slots = threading.BoundedSemaphore(max(16, threads * 8))
        self.hard_links: dict[tuple[int, int], FileRead] = {}
        # Reads whose bytes are not counted yet: hard links share one read.
        self.unread: set[FileRead] = set()

    def submit(self, dir_fd: int | None, name: bytes, st: os.stat_result) -> FileRead:
        """Queue a file for reading; hard links to an inode already queued share its future."""
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            shared = self.hard_links.get(key)
            if shared is not None:
                return shared
        future: FileRead
        if st.st_size < INLINE_SIZE:
            try:
                future = ReadDone(save_file_content(self.writer, dir_fd, name), None)
            except OSError as error:
                future = ReadDone(None, error)
        else:
            self.slots.acquire()
            try:
                future = self.pool.submit(self._read, dir_fd, name)
            except BaseException:
                self.slots.release()
                raise
        if st.st_nlink > 1:
            self.hard_links[key] = future
        self.unread.add(future)
        return future

    def _read(self, dir_fd: int | None, name: bytes) -> FileContent:
        try:
            return save_file_content(self.writer, dir_fd, name)
        finally:
            self.slots.release()

    def first_use(self, future: FileRead) -> bool:
        """Tell whether this is the first time future's content is used (count its bytes once)."""
        if future in self.unread:
            self.unread.discard(future)
            return True
        return False
