"""Encoder worker process: reads small files and returns their chunks compressed and sealed.

Run as `python -m` this module by encoders.EncoderPool. The first message on stdin is
the setup (master secret, compression level, chunker parameters); every later one is
a batch of files, each (absolute path, st_dev, st_ino) from the walker's lstat. The
answer lists, per file, either its metadata, xattrs and chunks, or why it could not be
read. Deduplication and packing stay in the walking process: a chunk this worker has
already sent is sent again as its id only (the walker has it pending or stored).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.chunk_reader import codec_for
from backvault.repo.chunker import make_chunker
from backvault.repo.config import ChunkerParams
from backvault.repo.memory import tune_malloc
from backvault.sources.filesystem.metadata import read_xattrs
from backvault.sources.filesystem.reading import FILE_FLAGS, open_noatime
from backvault.sources.filesystem.worker_pipes import receive, send, serving_pipes

FileJob = tuple[bytes, int, int]  # absolute path, st_dev, st_ino
# mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev
StatFields = tuple[int, int, int, int, int, int, int, int, int, int, int]
Encoded = tuple[bytes, bytes | None, int]  # chunk id, stored bytes (None: sent before), plaintext length
# (stat, xattrs, chunks, bytes read), or (None, errno, message, changed type) for a file not read
FileAnswer = tuple[StatFields, dict[str, bytes], list[Encoded], int] | tuple[None, int, str, bool]
# Ids remembered as sent; past this the memory is dropped (repeats then travel in full again).
_REMEMBERED = 200_000


class _ChangedType(OSError):
    pass


def stat_fields(st: os.stat_result) -> StatFields:
    """The lstat fields a tree node needs, as a compact tuple."""
    return (
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_rdev,
    )


def stat_from_fields(fields: StatFields) -> os.stat_result:
    """Rebuild an os.stat_result from stat_fields() (the node builders read st_* attributes)."""
    mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev = fields
    second = 1_000_000_000
    return os.stat_result(
        (mode, ino, dev, nlink, uid, gid, size, atime_ns // second, mtime_ns // second, ctime_ns // second),
        {"st_atime_ns": atime_ns, "st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns, "st_rdev": rdev},
    )


def _read_whole(fd: int, size: int) -> memoryview:
    """Read a file to its end (one byte more than lstat said tells a file that grew)."""
    buffer = bytearray(size + 1)
    view = memoryview(buffer)
    filled = 0
    while filled < len(view):
        count = os.readv(fd, [view[filled:]])
        if not count:
            return view[:filled]
        filled += count
    parts = [bytes(buffer)]
    while piece := os.read(fd, 1 << 20):
        parts.append(piece)
    return memoryview(b"".join(parts))


class Encoder:
    """Reads, cuts and encodes files for one worker; remembers which chunks it has sent."""

    def __init__(self, codec: BlobCodec, chunker: ChunkerParams) -> None:
        self.codec = codec
        self.min_size = chunker.min_size
        self.chunker = make_chunker(chunker)
        self.sent: set[bytes] = set()

    def file(self, job: FileJob) -> FileAnswer:
        """Read and encode one file, or say why it could not be read."""
        path, dev, ino = job
        try:
            fd = open_noatime(path, FILE_FLAGS, None)
            try:
                st = os.fstat(fd)
                # The path is followed from the root again: it must still lead to the lstat'ed file.
                if not stat.S_ISREG(st.st_mode) or st.st_dev != dev or st.st_ino != ino:
                    raise _ChangedType(errno.EINVAL, "changed type during backup")
                xattrs = read_xattrs(fd)
                data = _read_whole(fd, st.st_size)
            finally:
                os.close(fd)
        except OSError as error:
            return (None, error.errno or 0, error.strerror or str(error), isinstance(error, _ChangedType))
        return stat_fields(st), xattrs, self._encode(data), len(data)

    def _encode(self, data: memoryview) -> list[Encoded]:
        if not data:
            return []
        if len(data) < self.min_size:
            pieces = [data]
        else:
            pieces = [data[cut.offset : cut.offset + cut.length] for cut in self.chunker.cut_buf(data)]
        codec, sent = self.codec, self.sent
        chunks: list[Encoded] = []
        for piece in pieces:
            blob_id = codec.blob_id(BlobType.DATA, piece)
            if blob_id in sent:
                chunks.append((blob_id, None, len(piece)))
            else:
                chunks.append((blob_id, codec.encode(BlobType.DATA, blob_id, piece), len(piece)))
                sent.add(blob_id)
        return chunks

    def batch(self, jobs: list[FileJob]) -> list[FileAnswer]:
        """Answer a batch of files, in order."""
        if len(self.sent) > _REMEMBERED:
            self.sent.clear()
        return [self.file(job) for job in jobs]


def _serve() -> None:
    tune_malloc()
    inbound, outbound = serving_pipes()
    setup: dict[str, Any] | None = receive(inbound)
    if setup is None:
        return
    encoder = Encoder(codec_for(setup["secret"], setup["compression_level"]), setup["chunker"])
    while (jobs := receive(inbound)) is not None:
        try:
            answer: list[FileAnswer] | str = encoder.batch(jobs)
        except Exception as error:  # a bug, not a file problem: the walker fails the backup with this
            answer = f"encoder worker failed: {type(error).__name__}: {error}"
        send(outbound, answer)


if __name__ == "__main__":
    _serve()
