"""Small files read, compressed and sealed in worker processes (encode_worker), for big backups.

Python overhead per file under the GIL bounds a backup of many small files, so threads
do not help; processes do. The walker hands small files to EncoderPool.submit, which
collects them into batches; one parent thread per worker sends a batch, waits for the
answer and stores its chunks through BackupWriter.add_encoded (deduplication and
packing stay in this process), then resolves each file's future. Workers start only
once the walk has met `start_after` small files: small backups never pay for them.
A worker that dies or fails fails the backup (EncoderError); close() ends them all.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import Future

from backvault.repo.memory import tune_malloc
from backvault.repo.repository import Repository
from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem.encode_worker import FileAnswer, FileJob, stat_from_fields
from backvault.sources.filesystem.reading import ChangedTypeError, FileContent
from backvault.sources.filesystem.worker_pipes import WorkerProcess

BATCH_FILES = 256
BATCH_BYTES = 4 * 1024 * 1024
START_AFTER = 2000  # small files met before workers are worth starting
MAX_WORKERS = 4

_WORKER_MODULE = "backvault.sources.filesystem.encode_worker"

_Batch = tuple[list[FileJob], list["Future[FileContent]"]]


class EncoderError(RuntimeError):
    """An encoder worker died or failed: the backup cannot go on."""


def default_encoders() -> int:
    """Worker processes for a big backup: one per core (at most MAX_WORKERS), none on one core."""
    count = min(MAX_WORKERS, os.cpu_count() or 1)
    return count if count > 1 else 0


def _unread(answer: FileAnswer) -> OSError:
    """The error a file the worker could not read is reported with (as if read in-process)."""
    _, number, message, changed = answer
    if changed:
        return ChangedTypeError(number, message)
    return OSError(number, message) if number else OSError(message)


class EncoderPool:
    """Worker processes encoding small files for one backup; used from the walking thread."""

    def __init__(
        self, repo: Repository, writer: BackupWriter, workers: int, start_after: int = START_AFTER
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.workers = workers
        self.start_after = start_after
        self.seen = 0
        self.failure: EncoderError | None = None
        self._jobs: list[FileJob] = []
        self._futures: list[Future[FileContent]] = []
        self._bytes = 0
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=2 * max(1, workers))
        self._processes: list[WorkerProcess] = []
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def wanted(self) -> bool:
        """Tell whether the next small file goes to a worker (starting them once the backup is big)."""
        if self._threads:
            return True
        if self.workers < 1:
            return False
        self.seen += 1
        if self.seen < self.start_after:
            return False
        self._start()
        return True

    def _start(self) -> None:
        tune_malloc()
        repo = self.repo
        setup = {
            "secret": repo.master.secret,
            "compression_level": repo.config.compression_level,
            "chunker": repo.config.chunker,
        }
        for number in range(self.workers):
            process = WorkerProcess(_WORKER_MODULE, setup)
            self._processes.append(process)
            thread = threading.Thread(
                target=self._feed, args=(process,), name=f"encoder-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, path: bytes, st: os.stat_result) -> Future[FileContent]:
        """Queue a small regular file (absolute path, its lstat) for a worker."""
        if self.failure is not None:
            raise self.failure
        future: Future[FileContent] = Future()
        self._jobs.append((path, st.st_dev, st.st_ino))
        self._futures.append(future)
        self._bytes += st.st_size
        if len(self._jobs) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            self.flush()
        return future

    def flush(self) -> None:
        """Hand the batch being collected to the workers (waits while they all have work queued)."""
        if not self._jobs:
            return
        batch: _Batch = (self._jobs, self._futures)
        self._jobs, self._futures, self._bytes = [], [], 0
        while True:
            if self.failure is not None:
                self._fail(batch, self.failure)
                raise self.failure
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def _feed(self, process: WorkerProcess) -> None:
        """Parent-side thread: pass batches to one worker and store what it answers."""
        while (batch := self._queue.get()) is not None:
            try:
                answer = process.ask(batch[0])
                if answer is None:
                    raise EncoderError(f"encoder worker exited (status {process.process.poll()})")
                if not isinstance(answer, list) or len(answer) != len(batch[1]):
                    raise EncoderError(str(answer))
                self._store(batch[1], answer)
            except BaseException as error:  # any failure ends the backup
                failure = (
                    error if isinstance(error, EncoderError) else EncoderError(f"encoder failed: {error!r}")
                )
                if self.failure is None:
                    self.failure = failure
                self._fail(batch, failure)
                self._fail_queued(failure)
                return

    def _store(self, futures: list[Future[FileContent]], answers: list[FileAnswer]) -> None:
        """Store the new chunks of a batch (duplicates are dropped) and resolve its files."""
        add = self.writer.add_encoded
        for future, answer in zip(futures, answers, strict=True):
            if answer[0] is None:
                future.set_exception(_unread(answer))
                continue
            fields, xattrs, chunks, size = answer
            ids = [add(blob_id, stored, length) for blob_id, stored, length in chunks]
            future.set_result(FileContent(ids, size, stat_from_fields(fields), xattrs))

    @staticmethod
    def _fail(batch: _Batch, failure: BaseException) -> None:
        for future in batch[1]:
            if not future.done():
                future.set_exception(failure)

    def _fail_queued(self, failure: BaseException) -> None:
        """Fail every batch still queued (no worker may be left to take them)."""
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return
            if batch is None:  # a stop marker for another thread: leave it
                self._queue.put(None)
                return
            self._fail(batch, failure)

    def close(self, *, kill: bool = False) -> None:
        """Stop the workers: after the batches queued are done, or at once (kill) after an error."""
        if not self._threads:
            return
        if kill or self.failure is not None:
            if self.failure is None:
                self.failure = EncoderError("backup stopped")
            for process in self._processes:
                process.stop(kill=True)
            self._fail_queued(self.failure)
        self.flush_quietly()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        for process in self._processes:
            process.stop()
        self._threads, self._processes = [], []

    def flush_quietly(self) -> None:
        """Send or fail the last batch (close must not raise because a worker failed)."""
        with contextlib.suppress(EncoderError):
            self.flush()
