"""Running restore batches: in this process, or in worker processes when the restore is big.

Restoring is bound by Python and file-system calls per file, so threads do not help
(the GIL); processes do. The planning process walks the trees and creates the
directories, and hands batches of files to workers, which read, decrypt and write
them. Each worker is a fresh interpreter (`python -m` this module: nothing of the
parent's threads, index or main module comes along) fed over its stdin pipe; the
master secret travels in that pipe, never in argv or the environment. A worker opens
the restore target itself and checks that it is the directory the parent opened.
One thread per worker in the parent waits on it, so the planner never blocks on a
busy worker until the queue is full. Small restores never start workers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from backvault.repo.chunk_reader import codec_for
from backvault.repo.memory import tune_malloc
from backvault.repo.repository import Repository
from backvault.sources.filesystem.restore_plan import Directories, RestoredFile
from backvault.sources.filesystem.restore_write import (
    Batch,
    BatchResult,
    FileJob,
    RestoreResult,
    process_umask,
    run_batch,
)
from backvault.storage.local import LocalStore

BATCH_FILES = 512
BATCH_BYTES = 32 * 1024 * 1024
# Workers start only once this much is planned: below it, starting them costs more than it saves.
PARALLEL_FILES = 3000
PARALLEL_BYTES = 96 * 1024 * 1024
MAX_WORKERS = 4
_LENGTH = struct.Struct("<Q")
_SECRET_WORDS = ("PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "CREDENTIAL")


def default_workers() -> int:
    """Worker processes for a big restore: one per core (at most MAX_WORKERS), none on one core."""
    count = min(MAX_WORKERS, os.cpu_count() or 1)
    return count if count > 1 else 0


def _send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def _worker_environment() -> dict[str, str]:
    """The parent's environment without anything that looks like a secret (a worker needs none)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not any(word in name.upper() for word in _SECRET_WORDS)
    }


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=_worker_environment(),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.inbound: IO[bytes] = self.process.stdout
        self.outbound: IO[bytes] = self.process.stdin
        _send(self.outbound, setup)

    def run(self, batch: Batch) -> BatchResult:
        """Have the worker restore one batch and return what it did."""
        _send(self.outbound, batch)
        answer = _receive(self.inbound)
        if isinstance(answer, BatchResult):
            return answer
        if answer is None:
            raise OSError(f"restore worker exited (status {self.process.poll()})")
        raise OSError(str(answer))

    def stop(self, *, kill: bool = False) -> None:
        """End the worker: ask it to exit (closing its stdin), or kill it."""
        if kill:
            self.process.kill()
        with contextlib.suppress(OSError):  # the worker is gone already
            self.outbound.close()
        self.process.wait()
        self.inbound.close()


def _serve() -> None:
    """Worker process: restore batches read from stdin, answer each on stdout."""
    tune_malloc()
    # Files are then created with their final mode where that is safe (see FileWriter);
    # this process creates nothing else.
    os.umask(0)
    inbound = sys.stdin.buffer
    outbound = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    setup = _receive(inbound)
    if setup is None:
        return
    target_fd = os.open(setup["target"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    found = os.fstat(target_fd)
    if not stat.S_ISDIR(found.st_mode) or (found.st_dev, found.st_ino) != setup["identity"]:
        _send(outbound, f"restore target {setup['target']} was replaced during the restore")
        return
    store = setup["store"]
    codec = codec_for(setup["secret"], setup["compression_level"])
    directories = Directories(target_fd)
    while True:
        batch = _receive(inbound)
        if batch is None:
            break
        try:
            answer: BatchResult | str = run_batch(store, codec, directories, batch, 0)
        except Exception as error:  # reported for the batch's files; the next batch may still work
            answer = f"restore worker failed: {type(error).__name__}: {error}"
        _send(outbound, answer)
    directories.close()


class BatchRunner:
    """Collects planned files into batches and restores them, in parallel once the restore is big."""

    def __init__(
        self,
        repo: Repository,
        directories: Directories,
        target: str,
        result: RestoreResult,
        workers: int,
        merged: Callable[[], None],
    ) -> None:
        self.repo = repo
        self.directories = directories
        self.target = target
        self.result = result
        self.workers = workers if self._can_use_workers() else 0
        self.merged = merged  # called after each batch's result is counted (progress)
        self.primaries: list[RestoredFile] = []  # hard-link primaries by token
        self._batch = Batch()
        self._waiting: list[Batch] = []
        self._waiting_files = 0
        self._waiting_bytes = 0
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=max(1, workers))
        self._results: queue.Queue[BatchResult | None] = queue.Queue()
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def _can_use_workers(self) -> bool:
        # Workers reopen the store from its pickled description: only local stores travel.
        return isinstance(self.repo.store, LocalStore)

    def add(self, item: RestoredFile) -> None:
        """Queue a planned regular file (its chunks are all in the index)."""
        token = -1
        if item.node.links > 1:
            token = len(self.primaries)
            self.primaries.append(item)
        batch = self._batch
        batch.files.append(FileJob(item.directory, item.node, item.display, token, item.new_gid))
        index = self.repo.index
        for chunk_id in item.node.content:
            if chunk_id not in batch.locations:
                batch.locations[chunk_id] = index.locations(bytes.fromhex(chunk_id))
        batch.size += item.node.size
        if len(batch.files) >= BATCH_FILES or batch.size >= BATCH_BYTES:
            self._submit(batch)
            self._batch = Batch()

    def _submit(self, batch: Batch) -> None:
        if not self._threads:
            self._waiting.append(batch)
            self._waiting_files += len(batch.files)
            self._waiting_bytes += batch.size
            if self.workers < 2 or (
                self._waiting_files < PARALLEL_FILES and self._waiting_bytes < PARALLEL_BYTES
            ):
                return
            self._start_workers()
            waiting, self._waiting = self._waiting, []
            for queued in waiting:
                self._queue.put(queued)
        else:
            self._queue.put(batch)  # blocks while every worker has a batch and one waits
        self._drain(block=False)

    def _start_workers(self) -> None:
        target = os.fstat(self.directories.target_fd)
        repo = self.repo
        setup = {
            "store": repo.store,
            "secret": repo.master.secret,
            "compression_level": repo.config.compression_level,
            "target": self.target,
            "identity": (target.st_dev, target.st_ino),
        }
        for number in range(self.workers):
            worker = _Worker(setup)
            self._workers.append(worker)
            thread = threading.Thread(
                target=self._feed, args=(worker,), name=f"restore-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _feed(self, worker: _Worker) -> None:
        """Parent-side thread: pass batches to one worker and queue its answers."""
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                outcome = worker.run(batch) if not self._stopping else self._failed(batch, "restore stopped")
            except (OSError, EOFError, pickle.PickleError) as error:
                outcome = self._failed(batch, f"restore worker failed: {error}")
            self._results.put(outcome)

    @staticmethod
    def _failed(batch: Batch, why: str) -> BatchResult:
        outcome = BatchResult()
        outcome.errors = [(job.display, why) for job in batch.files]
        outcome.failed = {job.token: why for job in batch.files if job.token >= 0}
        return outcome

    def _drain(self, *, block: bool) -> None:
        """Count the answers that arrived (all of them, waiting for the rest, when block)."""
        while True:
            try:
                outcome = self._results.get(block=block, timeout=None)
            except queue.Empty:
                return
            if outcome is None:
                return
            self._merge(outcome)

    def _merge(self, outcome: BatchResult) -> None:
        self.result.files_restored += outcome.files_restored
        self.result.bytes_written += outcome.bytes_written
        self.result.errors.extend(outcome.errors)
        for token, why in outcome.failed.items():
            self.primaries[token].failed = why
        self.merged()

    def finish(self) -> None:
        """Restore whatever is still queued and wait for every batch."""
        if self._batch.files:
            self._submit(self._batch)
            self._batch = Batch()
        umask = process_umask()
        for batch in self._waiting:  # the restore stayed small: no workers
            self._merge(run_batch(self.repo.store, self.repo.codec, self.directories, batch, umask))
        self._waiting = []
        if self._threads:
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join()
            self._results.put(None)
            self._drain(block=True)
        self.close()

    def close(self) -> None:
        """Stop the workers; after an error, queued batches are dropped and workers killed."""
        if not self._workers:
            return
        self._stopping = True
        alive = any(thread.is_alive() for thread in self._threads)
        if alive:
            while True:  # make room for the stop markers
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            for worker in self._workers:
                worker.stop(kill=True)
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join()
        else:
            for worker in self._workers:
                worker.stop()
        self._workers = []
        self._threads = []


if __name__ == "__main__":
    _serve()
