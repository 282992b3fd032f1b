"""BackupWriter: chunk, deduplicate, encode and pack new data, then commit a snapshot.

Write order is packs -> index -> snapshot, so a crash at any moment leaves only
unreferenced packs or index entries, never a snapshot pointing at missing data.
An index object is written after every pack, so an interrupted backup's uploads are
reused by the next one. A full pack is stored (written, made durable, indexed) on a thread
of its own while the next one fills; the snapshot waits for every pack.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from backvault.repo.blob import BlobType
from backvault.repo.chunker import make_chunker
from backvault.repo.claims import ClaimTable
from backvault.repo.crypto import content_hash
from backvault.repo.index import encode_index
from backvault.repo.memory import tune_malloc
from backvault.repo.pack import PackBuilder, PackEntry, pack_key
from backvault.repo.tree import Tree
from backvault.storage.base import ObjectExistsError

if TYPE_CHECKING:
    from backvault.repo.locks import RepositoryLock
    from backvault.repo.repository import Repository
    from backvault.repo.snapshot import Snapshot

_DATA = BlobType.DATA
# Files up to this size are read whole into one buffer and cut there (2x the largest chunk).
WHOLE_FILE_MAX = 16 * 1024 * 1024
# Each thread keeps a buffer for whole files up to this size; bigger files share one kept
# buffer per writer (see _whole_file_buffer).
THREAD_FILE_BUFFER = 4 * 1024 * 1024
# O_NOATIME keeps backups from touching access times; only the owner or root may use it
_OPEN_FLAGS = os.O_RDONLY | (getattr(os, "O_NOATIME", 0) if os.geteuid() == 0 else 0)


@dataclass
class WriterStats:
    """Counters for one backup."""

    bytes_read: int = 0
    bytes_new: int = 0  # plaintext bytes of chunks that were not stored before
    bytes_stored: int = 0  # what those chunks occupy after compression and encryption
    chunks_new: int = 0
    chunks_reused: int = 0
    packs_written: int = 0

    def merge(self, other: WriterStats) -> None:
        """Add what another writer of the same backup (a worker process) stored."""
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class WriterReport:
    """What a writer in a worker process stored, for the backup process's writer to adopt."""

    stats: WriterStats
    index_ids: set[str]


class BackupWriter:
    """Stores new blobs for one backup; save_* may be called from several threads at once."""

    def __init__(self, repository: Repository, *, threads: int = 2) -> None:
        tune_malloc()  # before this backup's threads start allocating
        self.repository = repository
        self.stats = WriterStats()
        self._mutex = threading.Lock()
        self._pending: set[bytes] = set()
        # Ids known to be stored without asking the index (see vouch_for).
        self._vouched: set[bytes] = set()
        # Shared with the other processes of a backup that walks in several (see claims.py).
        self.claims: ClaimTable | None = None
        # None while a thread waits for a pack buffer to start the next pack (see _next_builder).
        self._builder: PackBuilder | None = PackBuilder()
        self._spare_buffers: list[mmap.mmap] = []  # of packs already stored (see PackBuilder)
        self._big_file_buffer: bytearray | None = None  # see _whole_file_buffer
        self._buffers = 1  # pack buffers in use or spare
        self._buffer_returned = threading.Condition(self._mutex)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="encode")
        # Storing a pack copies it into the page cache and waits for the disk (fsync): 60-200 ms
        # per pack that the thread which filled it would otherwise spend blocked. One pack is
        # stored while the next one fills; see _next_builder for the memory this may take.
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._store_turn = threading.Lock()
        self._storing: Future[None] | None = None
        self._store_failure: BaseException | None = None  # once a store fails, nothing commits
        self._slots = threading.BoundedSemaphore(max(1, threads) * 2)
        self._local = threading.local()
        self._lock: RepositoryLock | None = None
        self._committed = False
        # Read once: these are looked up for every blob.
        self._codec = repository.codec
        self._min_size = repository.config.chunker.min_size
        self._pack_size = repository.config.pack_size

    # --- context -------------------------------------------------------------------------

    def __enter__(self) -> BackupWriter:
        # the index used for dedup must be read under a lock, or prune could sweep packs we reuse
        self._lock = self.repository.lock_and_refresh()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if not self._committed:
                self.flush()  # keep what was uploaded reusable even without a snapshot
        finally:
            self._pool.shutdown(wait=True)
            self._store_pool.shutdown(wait=True)
            if self._lock is not None:
                self._lock.release()

    # --- saving content ------------------------------------------------------------------

    def _chunker(self) -> Any:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:  # FastCDC objects must not be shared between threads
            chunker = make_chunker(self.repository.config.chunker)
            self._local.chunker = chunker
        return chunker

    def save_file(self, path: bytes | str) -> tuple[list[str], int]:
        """Store a regular file's content; returns (chunk ids, bytes read)."""
        fd = os.open(path, _OPEN_FLAGS)
        try:
            return self.save_fd(fd)
        finally:
            os.close(fd)

    def save_fd(self, fd: int, size: int | None = None) -> tuple[list[str], int]:
        """Store the content readable from an open file descriptor (size: from the caller's fstat)."""
        if size is None:
            size = os.fstat(fd).st_size
        if size < self._min_size:
            data = _read_all(fd, size)
            if len(data) < self._min_size:
                return ([self._save_blob(data, _DATA, None)] if data else []), len(data)
            # the file grew while we read it: fall back to chunking what we already have + the rest
            return self._save_chunks(_PrefixedReader(data, fd))
        if size <= WHOLE_FILE_MAX:
            # The whole file in one buffer, cut in place: the stream chunker would allocate and
            # zero a 16 MiB buffer per file and copy every chunk out of it.
            with self._whole_file_buffer(size + 1) as view:  # one byte more tells a file that grew
                filled = _read_into_all(fd, view)
                if filled <= size:
                    return self._save_buffer(view[:filled])
                prefix = bytes(view)
            return self._save_chunks(_PrefixedReader(prefix, fd))
        return self._save_chunks(_FdReader(fd))

    @contextlib.contextmanager
    def _whole_file_buffer(self, size: int) -> Iterator[memoryview]:
        """A buffer for a whole file, kept so that reading each file does not map, zero and
        fault in new memory: this thread's own up to THREAD_FILE_BUFFER bytes, else the
        writer's one big buffer when no other thread has it.

        A fresh 16 MiB buffer per big file cost 60k of a first backup's ~154k page faults;
        one kept per thread instead would cost 16 MiB of RSS per reading thread.
        """
        if size <= THREAD_FILE_BUFFER:
            buffer: bytearray | None = getattr(self._local, "file_buffer", None)
            if buffer is None or len(buffer) < size:
                buffer = bytearray(size)
                self._local.file_buffer = buffer
            yield memoryview(buffer)[:size]
            return
        with self._mutex:
            big, self._big_file_buffer = self._big_file_buffer, None
        if big is None or len(big) < size:
            big = bytearray(size)
        try:
            yield memoryview(big)[:size]
        finally:
            with self._mutex:
                if self._big_file_buffer is None:
                    self._big_file_buffer = big

    def _save_buffer(self, view: memoryview) -> tuple[list[str], int]:
        """Chunk and store bytes already in memory; chunks are views, encoded before this returns."""
        ids: list[str] = []
        futures: list[Future[None]] = []
        try:
            for chunk in self._chunker().cut_buf(view):
                piece = view[chunk.offset : chunk.offset + chunk.length]
                ids.append(self._save_blob(piece, BlobType.DATA, futures))
        finally:
            _wait(futures)
        return ids, len(view)

    def save_stream(self, stream: BinaryIO) -> tuple[list[str], int]:
        """Store everything read from a binary stream (database dumps, object bodies)."""
        minimum = self.repository.config.chunker.min_size
        head = _read_up_to(stream, minimum)
        if len(head) < minimum:
            # Smaller than one chunk: FastCDC would cut it whole anyway, and setting it up costs
            # more than storing the blob (thousands of small objects in a bucket backup).
            return ([self._save_blob(head, BlobType.DATA, None)] if head else []), len(head)
        return self._save_chunks(_StreamPrefixedReader(head, stream))

    def _save_chunks(self, stream: _Reader) -> tuple[list[str], int]:
        """Chunk and store a stream too big to hold whole, read window by window.

        Chunks are views of two alternating windows (each is refilled once the chunks cut
        from it are encoded), not copies: a chunk copy per MiB was a fresh mapping, faulted in
        page by page. A chunk is cut only with max_size bytes ahead of its start, or at the
        end of the stream, as the stream chunker cuts it: the same chunks either way.
        """
        chunker = self._chunker()
        max_size = self.repository.config.chunker.max_size
        size = max_size + max(max_size // 2, 1)
        windows = (bytearray(size), bytearray(size))
        pending: tuple[list[Future[None]], list[Future[None]]] = ([], [])
        ids: list[str] = []
        total = 0
        carried = memoryview(b"")  # the start of a chunk not cut yet, in the other window
        current, ended = 0, False
        try:
            while True:
                _wait(pending[current])
                window = memoryview(windows[current])
                filled = len(carried)
                window[:filled] = carried
                while filled < size and not ended:
                    count = stream.readinto(window[filled:])
                    ended = not count
                    filled += count
                data = window[:filled]
                start = 0
                for chunk in chunker.cut_buf(data):
                    if not ended and filled - chunk.offset < max_size:
                        break  # with more data ahead this cut may fall elsewhere
                    start = chunk.offset + chunk.length
                    ids.append(self._save_blob(data[chunk.offset : start], BlobType.DATA, pending[current]))
                    total += chunk.length
                if ended:
                    return ids, total
                carried = data[start:]
                current ^= 1
        finally:
            try:
                _wait(pending[0])
            finally:
                _wait(pending[1])

    def save_chunk(self, data: bytes, pending: list[Future[None]] | None = None) -> str:
        """Store exactly one data chunk (deduplicated) and return its id; copies between repositories use it.

        With ``pending``, the chunk is encoded in the writer's pool and its future appended there;
        the caller waits for those futures before committing.
        """
        return self._save_blob(data, BlobType.DATA, pending)

    def save_tree(self, tree: Tree) -> str:
        """Store a serialised tree (deduplicated) and return its id."""
        return self._save_blob(tree.serialize(), BlobType.TREE, None)

    def vouch_for(self, chunk_ids: Iterable[str]) -> None:
        """Record blobs known to be stored because the parent snapshot (which exists) references them.

        Dedup then answers for them without the index, so a backup that finds nothing changed
        never loads it. The parent cannot be pruned meanwhile: this writer holds a lock.
        """
        with self._mutex:
            self._vouched.update(bytes.fromhex(chunk_id) for chunk_id in chunk_ids)

    def has_chunk(self, chunk_id: str) -> bool:
        """True when the chunk is already stored or being stored by this writer."""
        blob_id = bytes.fromhex(chunk_id)
        with self._mutex:
            return self._known(blob_id)

    def _known(self, blob_id: bytes) -> bool:
        """Stored or being stored (call with the mutex held)."""
        return blob_id in self._pending or blob_id in self._vouched or self.repository.index.has_live(blob_id)

    def _save_blob(
        self, data: bytes | memoryview, blob_type: BlobType, futures: list[Future[None]] | None
    ) -> str:
        """Deduplicate one blob; encode it now (futures is None) or in the pool."""
        blob_id = self._codec.blob_id(blob_type, data)
        with self._mutex:
            if blob_type == _DATA:
                self.stats.bytes_read += len(data)
            if self._known(blob_id) or (self.claims is not None and not self.claims.claim(blob_id)):
                self.stats.chunks_reused += 1
                return blob_id.hex()
            self._pending.add(blob_id)
        if futures is None:
            self._encode_and_pack(blob_type, blob_id, data)
        else:
            self._slots.acquire()
            future = self._pool.submit(self._encode_and_pack, blob_type, blob_id, data)
            future.add_done_callback(lambda _: self._slots.release())
            futures.append(future)
        return blob_id.hex()

    def _encode_and_pack(self, blob_type: BlobType, blob_id: bytes, data: bytes | memoryview) -> None:
        codec = self._codec
        payload = codec.payload(data)  # compression runs in parallel; sealing appends to the pack
        full: PackBuilder | None = None
        with self._mutex:
            while self._builder is None:
                self._buffer_returned.wait()
            builder = self._builder
            stored = builder.add_payload(codec, blob_type, blob_id, payload, len(data))
            stats = self.stats
            stats.chunks_new += 1
            stats.bytes_new += len(data)
            stats.bytes_stored += stored
            if builder.size >= self._pack_size:
                full = builder
                self._builder = self._next_builder()
        if full is not None:
            self._store_in_background(full)

    def _next_builder(self) -> PackBuilder:
        """A builder for the next pack, in the memory of one already stored (call with the mutex held).

        At most two pack buffers exist: one filling and one being stored. When both are taken,
        this waits (without the mutex) until the store thread gives one back, and meanwhile no
        blob is added anywhere: a third buffer would cost 16 MiB more RSS per process.
        """
        self._builder = None
        while not self._spare_buffers and self._buffers >= 2:
            self._buffer_returned.wait()
        if self._spare_buffers:
            builder = PackBuilder(self._spare_buffers.pop())
        else:
            self._buffers += 1
            builder = PackBuilder()
        self._buffer_returned.notify_all()  # to the threads waiting to add their blob
        return builder

    def _store_in_background(self, builder: PackBuilder) -> None:
        """Hand a full pack to the store thread, once the pack before it is stored."""
        with self._store_turn:
            try:
                self._wait_stored()
            except BaseException:
                self._give_back(builder)  # its blobs are lost with the backup; its buffer must not be
                raise
            self._storing = self._store_pool.submit(self._upload, builder)

    def _wait_stored(self) -> None:
        """Wait until the pack handed to the store thread is stored; raise what failed in any store.

        A failure stays: blobs of files already saved were in that pack, so every later
        store, flush and commit of this writer must fail too.
        """
        storing, self._storing = self._storing, None
        if storing is not None:
            try:
                storing.result()
            except BaseException as error:
                self._store_failure = error
        if self._store_failure is not None:
            raise self._store_failure

    def _give_back(self, builder: PackBuilder) -> None:
        """Return a pack's buffer for the next pack and wake the threads waiting for one."""
        with self._mutex:
            self._spare_buffers.append(builder.buffer)
            self._buffer_returned.notify_all()

    def _upload(self, builder: PackBuilder) -> None:
        """Write one pack, then the index object that makes its blobs known."""
        repository = self.repository
        try:
            pack_id = store_pack(repository, builder)
        finally:  # even when the store failed: a thread may be waiting for a buffer
            self._give_back(builder)
        with self._mutex:
            if repository.index_loaded:  # else the next load reads the index object just written
                repository.index.add_pack(pack_id, builder.entries)
            self._pending.difference_update(entry.id for entry in builder.entries)
            self.stats.packs_written += 1

    # --- finishing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Store the partly filled pack and its index, and wait until every pack is stored."""
        with self._mutex:
            while self._builder is None:
                self._buffer_returned.wait()
            builder = self._builder
            if builder.entries:  # an empty one stays: a builder set aside keeps its buffer counted
                self._builder = self._next_builder()
        with self._store_turn:
            self._wait_stored()
        if builder.entries:
            self._upload(builder)

    def report(self) -> WriterReport:
        """Flush, then say what was stored (in a worker process, for the backup process)."""
        self.flush()
        return WriterReport(self.stats, set(self.repository.index_ids))

    def adopt(self, report: WriterReport) -> None:
        """Count what a worker process stored; this process's index no longer knows every blob.

        The index is dropped rather than patched (adding ~100k entries cost 0.3 s at the end of
        a backup): a later use reads it again, with the workers' index objects. Until the
        commit, the claim table still answers for the workers' blobs.
        """
        repository = self.repository
        with self._mutex:
            self.stats.merge(report.stats)
            repository.forget_index()
            repository.index_ids.update(report.index_ids)

    def commit(self, snapshot: Snapshot) -> Snapshot:
        """Flush everything, then store the snapshot (the last write of a backup)."""
        self.flush()
        if self._lock is not None:
            self._lock.check_fresh()
        if snapshot.time.tzinfo is None:
            snapshot.time = snapshot.time.replace(tzinfo=UTC)
        saved = self.repository.save_snapshot(snapshot)
        self._committed = True
        return saved


def store_pack(repository: Repository, builder: PackBuilder) -> str:
    """Upload a finished pack, then the index object that makes its blobs known; returns the pack id."""
    with builder.finish(repository.sealer) as data:  # released here: the builder's memory is reused
        pack_id = content_hash(data)
        with contextlib.suppress(ObjectExistsError):  # identical bytes already stored by a retried upload
            repository.store.put_new(pack_key(pack_id), data)
    write_index(repository, {pack_id: builder.entries})
    return pack_id


def write_index(
    repository: Repository, packs: dict[str, list[PackEntry]], supersedes: list[str] | None = None
) -> str:
    """Store an index object for the given packs; returns its id."""
    data = encode_index(packs, supersedes or [], repository.sealer)
    index_id = content_hash(data)
    with contextlib.suppress(ObjectExistsError):
        repository.store.put_new(f"index/{index_id}", data)
    repository.index_ids.add(index_id)
    return index_id


def _wait(futures: list[Future[None]]) -> None:
    """Wait for every encode, forget them, then raise the first failure (if any)."""
    failure: BaseException | None = None
    for future in futures:
        try:
            future.result()
        except BaseException as error:  # the others still use the caller's buffers
            failure = failure or error
    futures.clear()
    if failure is not None:
        raise failure


class _Reader(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


def _read_all(fd: int, size: int) -> bytes:
    """Read a small file to its end: one read when it still has the size fstat gave."""
    # Asking for one byte more than expected: a shorter answer from a regular file is its end,
    # which saves the second read that would only return b"" (one syscall per small file).
    first = os.read(fd, size + 1)
    if len(first) <= size:
        return first
    parts = [first]
    while piece := os.read(fd, max(size, 65536)):
        parts.append(piece)
    return b"".join(parts)


def _read_into_all(fd: int, view: memoryview) -> int:
    """Fill view from fd until it is full or the file ends; return how many bytes were read."""
    filled = 0
    while filled < len(view):
        count = os.readv(fd, [view[filled:]])
        if not count:
            break
        filled += count
    return filled


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at the end of the stream (raw streams may return less)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = _read_into(stream, view[filled:])
        if not count:
            break
        filled += count
    return bytes(view[:filled])


def _read_into(stream: BinaryIO, buffer: memoryview) -> int:
    """readinto() where the stream has it (the chunker's readers only do), else read()."""
    reader = getattr(stream, "readinto", None)
    if reader is not None:
        return int(reader(buffer) or 0)
    piece = stream.read(len(buffer))
    buffer[: len(piece)] = piece
    return len(piece)


class _StreamPrefixedReader:
    """Serves bytes already read from a stream, then the rest of the stream, to the chunker."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readinto(self, buffer: memoryview) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return _read_into(self._stream, buffer)


class _FdReader:
    """A readinto() reader over a file descriptor, for the chunker."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readinto(self, buffer: memoryview) -> int:
        return os.readv(self._fd, [buffer])


class _PrefixedReader(_FdReader):
    """Serves bytes already read, then the rest of the file."""

    def __init__(self, prefix: bytes, fd: int) -> None:
        super().__init__(fd)
        self._prefix = memoryview(prefix)

    def readinto(self, buffer: memoryview) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return super().readinto(buffer)
