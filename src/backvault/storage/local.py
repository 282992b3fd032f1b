"""Object store on a local directory: one file per key, written atomically."""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from backvault.storage import direct_io
from backvault.storage.base import ObjectExistsError, ObjectInfo, ObjectNotFoundError, StorageError

# Temp files live next to their final name (so rename stays on one filesystem) and carry
# a prefix that validate_key refuses in every key segment, so they can never clash with
# or be listed as objects.
TEMP_PREFIX = ".tmp-"

# Objects at least this big (packs) are written around the page cache (see direct_io).
DIRECT_WRITE_MIN = 1024 * 1024

# Filesystems without hard links (some FUSE, SMB, exFAT mounts) report one of these.
_NO_HARDLINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)


def validate_key(key: str) -> str:
    """Return key unchanged if it is a valid object key, else raise ValueError naming the problem."""
    if not isinstance(key, str):
        raise ValueError(f"object key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("object key must not be empty")
    if key.startswith("/"):
        raise ValueError(f"object key must not start with '/': {key!r}")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"object key must not contain a backslash or NUL byte: {key!r}")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"object key must not contain an empty segment ('//' or trailing '/'): {key!r}")
        if segment in (".", ".."):
            raise ValueError(f"object key must not contain '.' or '..' segments: {key!r}")
        if segment.startswith(TEMP_PREFIX):
            raise ValueError(f"object key segments must not start with {TEMP_PREFIX!r} (reserved): {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return a listing prefix unchanged if valid keys can start with it, else raise ValueError."""
    if prefix == "":
        return prefix
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"listing prefix must not start with '/' or contain a backslash or NUL: {prefix!r}")
    # Only the complete segments are checked: the last one may be cut short ("data/a").
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise ValueError(f"listing prefix must not contain empty, '.' or '..' segments: {prefix!r}")
    return prefix


def byte_view(data: bytes | memoryview) -> memoryview:
    """Return a flat unsigned-byte view of data without copying it."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _fsync_directory(path: Path) -> None:
    """Make a directory's entries (new, renamed files) durable."""
    if os.name == "nt":  # Windows cannot open a directory for fsync; NTFS journals metadata.
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    """Read length bytes at offset, fewer only where the file ends."""
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = os.pread(fd, remaining, offset)
        if not part:
            break  # End of file.
        parts.append(part)
        remaining -= len(part)
        offset += len(part)
    # One pread normally returns everything, so this join copies nothing in practice.
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill view from offset (less only where the file ends); returns the bytes read."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [view[done:]], offset + done)
        else:  # no preadv (Windows): one copy more
            part = os.pread(fd, len(view) - done, offset + done)
            count = len(part)
            view[done : done + count] = part
        if not count:
            break  # End of file.
        done += count
    return done


def _pread_direct(fd: int, view: memoryview, offset: int) -> int:
    """_pread_into with O_DIRECT: a read that ends off a block boundary has met the end of the file."""
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        done += count
        if not count or done % direct_io.ALIGNMENT:
            break
    return done


def _check_ranges(ranges: Sequence[tuple[int, int]]) -> None:
    for offset, length in ranges:
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, got offset={offset} length={length}")


def _aligned(offset: int, length: int) -> tuple[int, int]:
    """The smallest run of whole aligned blocks that holds (offset, length)."""
    start = direct_io.align_down(offset)
    return start, direct_io.align_up(offset + length) - start


class _DirectRefused(Exception):
    """The file or its device does not take O_DIRECT reads as asked."""


def _write_all(fd: int, view: memoryview) -> None:
    """Write the whole view to fd; os.write may write less than asked."""
    written = 0
    total = view.nbytes
    while written < total:
        written += os.write(fd, view[written:])


class LocalStore:
    """An ObjectStore on a local directory (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(os.path.abspath(os.fspath(root)))
        self._root_text = str(self._root)
        self._direct = bool(direct_io.O_DIRECT)  # until the filesystem refuses it
        self._local = threading.local()  # each thread's AlignedBuffer

    def __repr__(self) -> str:
        return f"LocalStore({str(self._root)!r})"

    def __reduce__(self) -> tuple[type[LocalStore], tuple[str]]:
        """Pickled as its root alone (restore workers get the store this way)."""
        return type(self), (self._root_text,)

    @property
    def location(self) -> str:
        """The absolute directory path."""
        return str(self._root)

    @property
    def root(self) -> Path:
        """The directory holding the objects."""
        return self._root

    def close(self) -> None:
        """Release resources (nothing to release for a directory)."""

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(key).split("/"))

    def _file(self, key: str) -> str:
        """The path of key as a string: reads skip pathlib, which costs more than the read itself."""
        return os.path.join(self._root_text, *validate_key(key).split("/"))

    def _error(self, operation: str, key: str, error: OSError) -> StorageError:
        reason = error.strerror or type(error).__name__
        return StorageError(f"local {operation} of {key!r} in {self._root} failed: {reason}")

    def _ensure_directory(self, directory: Path) -> None:
        """Create directory and missing parents, fsyncing each parent so new entries survive a crash."""
        if directory.is_dir():
            return
        if directory != directory.parent:
            self._ensure_directory(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "an object is in the way of a directory") from None
            return  # Created concurrently by another writer.
        _fsync_directory(directory.parent)

    def _aligned_buffer(self) -> direct_io.AlignedBuffer:
        buffer: direct_io.AlignedBuffer | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = direct_io.AlignedBuffer()
        return buffer

    def _write_new(self, fd: int, view: memoryview, direct: bool) -> None:
        """Write view into the new, empty file fd (opened with O_DIRECT when direct)."""
        if direct:
            try:
                direct_io.write_direct(fd, view, self._aligned_buffer())
                return
            except OSError as error:
                if not direct_io.refused(error):
                    raise
                self._direct = False  # this filesystem or device wants buffered writes
                direct_io.set_direct(fd, False)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, view)

    def _write_temp(self, directory: Path, view: memoryview) -> Path:
        """Write view to a new, fsynced temp file in directory and return its path."""
        temp = directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        direct = self._direct and view.nbytes >= DIRECT_WRITE_MIN
        try:
            fd = os.open(temp, flags | direct_io.O_DIRECT if direct else flags, 0o666)
        except OSError as error:
            if not (direct and direct_io.refused(error)):
                raise
            self._direct = direct = False
            temp.unlink(missing_ok=True)  # some kernels create the file before they refuse
            fd = os.open(temp, flags, 0o666)
        try:
            self._write_new(fd, view, direct)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return temp

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key atomically (temp file, fsync, rename, fsync directory)."""
        path = self._path(key)
        view = byte_view(data)
        try:
            self._ensure_directory(path.parent)
            temp = self._write_temp(path.parent, view)
            try:
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            _fsync_directory(path.parent)
        except OSError as error:
            raise self._error("put", key, error) from error

    def put_new(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key only if absent; race-free across processes via link(2)."""
        path = self._path(key)
        view = byte_view(data)
        try:
            self._ensure_directory(path.parent)
            temp = self._write_temp(path.parent, view)
            try:
                # link() fails atomically when the name exists, unlike rename() which replaces.
                os.link(temp, path)
            except FileExistsError:
                raise ObjectExistsError(key) from None
            except OSError as error:
                if error.errno not in _NO_HARDLINK_ERRNOS:
                    raise
                self._put_new_exclusive(path, key, view)
            finally:
                temp.unlink(missing_ok=True)
            _fsync_directory(path.parent)
        except OSError as error:
            raise self._error("put_new", key, error) from error

    def _put_new_exclusive(self, path: Path, key: str, view: memoryview) -> None:
        """Create-only write for filesystems without hard links.

        O_EXCL keeps it race-free, but a reader may briefly see a partly written object;
        this is the best such filesystems allow.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise ObjectExistsError(key) from None
        try:
            _write_all(fd, view)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)  # Ours: nobody else could have created it.
            raise
        os.close(fd)

    def get(self, key: str) -> bytes:
        """Return the whole object."""
        path = self._path(key)
        try:
            with open(path, "rb") as file:
                return file.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as error:
            raise self._error("get", key, error) from error

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to length bytes from offset (fewer if the object ends first), read with pread."""
        return self._read_ranges("get_range", key, ((offset, length),))[0]

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return get_range(key, offset, length) for each (offset, length), opening the file once."""
        if not ranges:
            return []
        return self._read_ranges("get_ranges", key, ranges)

    def get_ranges_into(
        self, key: str, ranges: Sequence[tuple[int, int]], buffer: direct_io.AlignedBuffer
    ) -> list[memoryview]:
        """get_ranges, read into buffer: views of it, valid until buffer is used again.

        Read around the page cache where the filesystem allows (see direct_io): each range
        then grows to whole aligned blocks, read into an aligned part of buffer.
        """
        _check_ranges(ranges)
        if self._direct:
            try:
                return self._read_into(key, ranges, buffer, direct=True)
            except _DirectRefused:
                self._direct = False
        return self._read_into(key, ranges, buffer, direct=False)

    def _read_into(
        self, key: str, ranges: Sequence[tuple[int, int]], buffer: direct_io.AlignedBuffer, *, direct: bool
    ) -> list[memoryview]:
        spans = [_aligned(offset, length) for offset, length in ranges] if direct else list(ranges)
        memory = buffer.take(sum(length for _, length in spans))
        parts: list[memoryview] = []
        position = 0
        for _, length in spans:
            parts.append(memory[position : position + length])
            position += length
        counts = self._read_ranges("get_ranges_into", key, spans, parts, direct=direct)
        views: list[memoryview] = []
        for part, count, (offset, length), (start, _) in zip(parts, counts, ranges, spans, strict=True):
            skip = offset - start  # the aligned read began this far before the range
            views.append(part[skip : max(skip, min(count, skip + length))])
        return views

    @overload
    def _read_ranges(self, operation: str, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]: ...

    @overload
    def _read_ranges(
        self,
        operation: str,
        key: str,
        ranges: Sequence[tuple[int, int]],
        into: list[memoryview],
        *,
        direct: bool,
    ) -> list[int]: ...

    def _read_ranges(
        self,
        operation: str,
        key: str,
        ranges: Sequence[tuple[int, int]],
        into: list[memoryview] | None = None,
        *,
        direct: bool = False,
    ) -> list[bytes] | list[int]:
        """Open key once and pread every range, as bytes or into its view (errors named after operation).

        direct: with O_DIRECT (ranges and views aligned); _DirectRefused when that is refused.
        """
        _check_ranges(ranges)
        path = self._file(key)
        try:
            fd = os.open(path, os.O_RDONLY | direct_io.O_DIRECT if direct else os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as error:
            if direct and direct_io.refused(error):
                raise _DirectRefused from error
            raise self._error(operation, key, error) from error
        try:
            if into is None:
                return [_pread_all(fd, offset, length) for offset, length in ranges]
            read = _pread_direct if direct else _pread_into
            return [read(fd, view, offset) for view, (offset, _) in zip(into, ranges, strict=True)]
        except IsADirectoryError:
            raise ObjectNotFoundError(key) from None
        except OSError as error:
            if direct and direct_io.refused(error):
                raise _DirectRefused from error
            raise self._error(operation, key, error) from error
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        """Return size and modification time."""
        path = self._path(key)
        try:
            result = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as error:
            raise self._error("stat", key, error) from error
        if not path.is_file():
            raise ObjectNotFoundError(key)
        return ObjectInfo(key=key, size=result.st_size, modified=result.st_mtime)

    def exists(self, key: str) -> bool:
        """Tell whether key exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove key; a missing key is fine."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as error:
            raise self._error("delete", key, error) from error
        # No directory fsync: a delete lost in a crash only leaves an object that prune
        # removes again, and syncing per delete would make large prunes very slow.

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with prefix; temp files are skipped."""
        validate_prefix(prefix)
        # Start the walk at the deepest directory the prefix names completely.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._root.joinpath(*base.split("/")) if base else self._root
        yield from self._walk(start, base, prefix)

    def _walk(self, directory: Path, directory_key: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise self._error("list", directory_key or "/", error) from error
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            key = f"{directory_key}/{entry.name}" if directory_key else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where keys can still match the prefix.
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        yield from self._walk(Path(entry.path), key, prefix)
                    continue
                if not key.startswith(prefix):
                    continue
                result = entry.stat()
            except FileNotFoundError:
                continue  # Deleted while listing.
            yield ObjectInfo(key=key, size=result.st_size, modified=result.st_mtime)
