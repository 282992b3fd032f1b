"""Running restore batches: in this process, or in worker processes when the restore is big.

Restoring is bound by Python and file-system calls per file, so threads do not help
(the GIL); processes do. The planning process walks the trees and creates the
directories, and hands batches of files to workers, which read, decrypt and write
them. Once the workers run (at once when the snapshot's summary says the restore is
big), it hands them whole subtrees instead: a worker loads the trees, creates the
directories and writes the files itself, within a budget, and hands back the
directories it did not get to, so that the work stays spread over all workers. It also
hands back any file with hard links (only the planning process sees every subtree) and
the directories whose metadata must wait for the very end (those others still add
entries to); it applies the rest itself once their files are written.

Each worker is a fresh interpreter (`python -m` this module: nothing of the parent's
threads, index or main module comes along) fed over its stdin pipe; the master secret
travels in that pipe, never in argv or the environment. A worker opens the restore
target itself and checks that it is the directory the parent opened, and reads the
index itself (under the parent's lock). One thread per worker in the parent waits on
it, so the planner never blocks on a busy worker until the queue is full. Small
restores never start workers.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from backvault.repo.chunk_reader import codec_for
from backvault.repo.crypto import MasterKey
from backvault.repo.index import ChunkIndex
from backvault.repo.memory import tune_malloc
from backvault.repo.repository import Repository
from backvault.repo.tree import Node
from backvault.sources.filesystem.restore_plan import (
    Directories,
    NewGid,
    Planner,
    RestoredFile,
    display,
)
from backvault.sources.filesystem.restore_trees import TreeReader
from backvault.sources.filesystem.restore_write import (
    Batch,
    BatchMemory,
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
# A worker walks a handed-off subtree until it has planned this many files and directories
# (or bytes), then hands back the directories it has not entered: small enough that no
# worker is left with a long tail, big enough that the messages cost little.
JOB_ENTRIES = 1000
JOB_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct("<Q")
_Answer = TypeVar("_Answer")
_SECRET_WORDS = ("PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "CREDENTIAL")


def default_workers() -> int:
    """Worker processes for a big restore: one per core (at most MAX_WORKERS), none on one core."""
    count = min(MAX_WORKERS, os.cpu_count() or 1)
    return count if count > 1 else 0


Root = tuple[str, bytes, NewGid]  # a directory to walk: tree id, path, what entries created in it get
# A restored directory's metadata: path, mode, uid, gid, atime, mtime, xattrs, owner it has now.
DirectoryRecord = tuple[bytes, int, int, int, int, int, dict[str, bytes], tuple[int, int] | None]


@dataclass
class SubtreeJob:
    """Directories (already created) whose whole subtrees a worker restores."""

    roots: list[Root]
    owner_as_predicted: bool | None  # the planner's finding (see Planner.owner_as_predicted)
    budget: tuple[int, int] = (JOB_ENTRIES, JOB_BYTES)  # entries and bytes walked before handing back


@dataclass
class Walked:
    """A worker's walk of a SubtreeJob, sent before it writes the job's files."""

    deferred: list[Root] = field(default_factory=list)  # directories created but not walked
    # Created or reused, in pre-order, whose metadata the planning process applies at the end.
    directories: list[DirectoryRecord] = field(default_factory=list)
    linked: list[tuple[bytes, Node, NewGid]] = field(default_factory=list)  # files with hard links
    errors: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    others: int = 0  # symlinks and special files created


def _record(path: bytes, node: Node, owner: tuple[int, int] | None) -> DirectoryRecord:
    return (path, node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns, node.xattrs, owner)


def _directory(record: DirectoryRecord) -> tuple[bytes, Node, tuple[int, int] | None]:
    path, mode, uid, gid, atime_ns, mtime_ns, xattrs, owner = record
    name = path.rpartition(b"/")[2]
    node = Node(name, "dir", mode, uid, gid, mtime_ns=mtime_ns, atime_ns=atime_ns, xattrs=xattrs)
    return path, node, owner


def _add_to_batch(batch: Batch, item: RestoredFile, token: int, index: ChunkIndex) -> None:
    """Add a planned file (its chunks are all in the index) and its chunks' locations to batch."""
    batch.files.append(FileJob(item.directory, item.node, item.display, token, item.new_gid))
    for chunk_id in item.node.content:
        if chunk_id not in batch.locations:
            batch.locations[chunk_id] = index.locations(bytes.fromhex(chunk_id))
    batch.size += item.node.size


def _full(batch: Batch) -> bool:
    return len(batch.files) >= BATCH_FILES or batch.size >= BATCH_BYTES


class _JobWalk:
    """Worker side: walk a SubtreeJob's roots within the budget, cutting the files into batches."""

    def __init__(
        self, repo: Repository, trees: TreeReader, directories: Directories, job: SubtreeJob
    ) -> None:
        self.walked = Walked()
        self.batches: list[Batch] = [Batch()]
        self.index = repo.index
        planner = Planner(repo, directories, self.walked.errors)
        planner.trees = trees  # shared by the jobs: the windows read stay useful
        planner.owner_as_predicted = job.owner_as_predicted
        planner.add_file = self._add
        planner.hand_off = self._hand_off
        planner.defer_linked = lambda directory, node, gid: self.walked.linked.append((directory, node, gid))
        self.planner = planner
        self.budget = job.budget
        self.finished: list[tuple[bytes, Node, tuple[int, int] | None]] = []  # see _split_directories

    def _spent(self) -> bool:
        planner = self.planner
        entries, size = self.budget
        return planner.file_count + len(planner.created_directories) >= entries or planner.byte_count >= size

    def _add(self, item: RestoredFile) -> None:
        batch = self.batches[-1]
        _add_to_batch(batch, item, -1, self.index)
        if _full(batch):
            self.batches.append(Batch())

    def _hand_off(self, tree_id: str, path: bytes, gid: NewGid) -> bool:
        if not self._spent():
            return False
        self.walked.deferred.append((tree_id, path, gid))
        return True

    def walk(self, roots: list[Root]) -> Walked:
        """Walk roots (at least the first, so that every job gets somewhere) and report."""
        planner, walked = self.planner, self.walked
        for number, (tree_id, path, gid) in enumerate(roots):
            if number and self._spent():
                walked.deferred.extend(roots[number:])
                break
            planner.walk(tree_id, path, None, gid)
        walked.files, walked.bytes = planner.file_count, planner.byte_count
        walked.others = planner.others
        self._split_directories()
        return walked

    def _split_directories(self) -> None:
        """Keep the metadata of the directories nobody else touches, to apply after the files.

        A directory someone else adds entries to (one handed back, one that gets a hard link)
        must get its times at the very end, from the planning process. So must one whose mode
        could stop others from passing through it. The rest are applied here, in parallel
        with the other workers, instead of one by one at the end.
        """
        walked = self.walked
        later = {path for _, path, _ in walked.deferred} | {directory for directory, _, _ in walked.linked}
        for entry in self.planner.created_directories:
            path, node, _ = entry
            if path in later or node.mode & stat.S_IRWXU != stat.S_IRWXU:
                walked.directories.append(_record(*entry))
            else:
                self.finished.append(entry)

    def apply_directory_metadata(self, result: BatchResult) -> None:
        """Apply the metadata of the directories kept (deepest first), once their files are written."""
        planner = self.planner
        planner.created_directories, planner.errors = self.finished, result.errors
        result.directories += planner.apply_directory_metadata()


def _run_job(
    repo: Repository,
    trees: TreeReader,
    directories: Directories,
    job: SubtreeJob,
    outbound: IO[bytes],
    memory: BatchMemory,
) -> BatchResult:
    """Restore a SubtreeJob: send what the walk found, then write the files and return the result."""
    walk = _JobWalk(repo, trees, directories, job)
    _send(outbound, walk.walk(job.roots))
    result = BatchResult()
    for batch in walk.batches:
        if batch.files:
            done = run_batch(repo.store, repo.codec, directories, batch, 0, memory)
            result.files_restored += done.files_restored
            result.bytes_written += done.bytes_written
            result.errors.extend(done.errors)
    walk.apply_directory_metadata(result)
    return result


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
        return self.answer(BatchResult)

    def answer(self, expected: type[_Answer]) -> _Answer:
        """The worker's next answer, which must be an expected one (else OSError)."""
        answer = _receive(self.inbound)
        if isinstance(answer, expected):
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


def _open_repository(setup: dict[str, Any]) -> Repository | None:
    """The repository for walking subtrees, its index read now, while the planner reads its own.

    None without the config (then only batches can be restored). The parent holds the
    repository's lock, so prune cannot sweep what this index names.
    """
    if "config" not in setup:
        return None
    repo = Repository(setup["store"], MasterKey(setup["secret"]), setup["config"], "worker", load_index=False)
    with contextlib.suppress(Exception):  # a failure is reported by the first subtree that needs it
        repo.load_index()
    return repo


def _serve() -> None:
    """Worker process: restore batches and subtrees read from stdin, answer each on stdout."""
    tune_malloc()
    gc.disable()  # no reference cycles to collect, many objects to rescan (see restore.py)
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
    repo = _open_repository(setup)
    trees = TreeReader(repo) if repo is not None else None
    memory = BatchMemory()  # every batch's packs are read into the same memory
    while True:
        message = _receive(inbound)
        if message is None:
            break
        try:
            if isinstance(message, SubtreeJob):
                if repo is None or trees is None:
                    raise ValueError("subtrees need the repository config")
                answer: BatchResult | str = _run_job(repo, trees, directories, message, outbound, memory)
            else:
                answer = run_batch(store, codec, directories, message, 0, memory)
        except Exception as error:  # reported for the batch's files; the next batch may still work
            answer = f"restore worker failed: {type(error).__name__}: {error}"
        _send(outbound, answer)
    directories.close()


Work = Batch | SubtreeJob


class BatchRunner:
    """Collects planned files into batches and restores them, in parallel once the restore is big.

    Once the workers run, it also takes whole subtrees off the planner (hand_off). Only the
    thread that plans calls its methods; worker answers reach it through a queue.
    """

    def __init__(
        self,
        repo: Repository,
        directories: Directories,
        target: str,
        result: RestoreResult,
        workers: int,
        merged: Callable[[], None],
        planner: Planner,
    ) -> None:
        self.repo = repo
        self.directories = directories
        self.target = target
        self.result = result
        self.workers = workers if self._can_use_workers() else 0
        self.merged = merged  # called after each batch's result is counted (progress)
        self.planner = planner
        self.primaries: list[RestoredFile] = []  # hard-link primaries by token
        self._batch = Batch()
        self._waiting: list[Batch] = []
        self._waiting_files = 0
        self._waiting_bytes = 0
        self._queue: queue.Queue[Work | None] = queue.Queue(maxsize=max(1, workers))
        self._results: queue.Queue[BatchResult | Walked] = queue.Queue()
        self._outstanding = 0  # work queued whose final result was not counted yet
        self._draining = False
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
        _add_to_batch(self._batch, item, token, self.repo.index)
        if _full(self._batch):
            self._submit(self._batch)
            self._batch = Batch()

    def expect(self, files: int, size: int) -> None:
        """Start the workers at once if the restore will be big (they start while the index loads)."""
        if self.workers >= 2 and not self._threads and (files >= PARALLEL_FILES or size >= PARALLEL_BYTES):
            self._start_workers()

    def hand_off(self, tree_id: str, path: bytes, gid: NewGid) -> bool:
        """Have a worker restore the subtree below path, once workers run (else False)."""
        if not self._threads:
            return False
        self._put(self._job([(tree_id, path, gid)]))
        self._drain(block=False)
        return True

    def _job(self, roots: list[Root]) -> SubtreeJob:
        # The budget is read here, in the planning process, so that tests can lower it.
        return SubtreeJob(roots, self.planner.owner_as_predicted, (JOB_ENTRIES, JOB_BYTES))

    def _put(self, work: Work) -> None:
        self._outstanding += 1
        self._queue.put(work)  # blocks while every worker has work and more waits

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
                self._put(queued)
        else:
            self._put(batch)
        self._drain(block=False)

    def _start_workers(self) -> None:
        target = os.fstat(self.directories.target_fd)
        repo = self.repo
        setup = {
            "store": repo.store,
            "secret": repo.master.secret,
            "compression_level": repo.config.compression_level,
            "config": repo.config,
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
        """Parent-side thread: pass work to one worker and queue its answers."""
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                if self._stopping:
                    outcome = self._failed(work, "restore stopped")
                elif isinstance(work, SubtreeJob):
                    _send(worker.outbound, work)
                    self._results.put(worker.answer(Walked))
                    outcome = worker.answer(BatchResult)
                else:
                    outcome = worker.run(work)
            except (OSError, EOFError, pickle.PickleError) as error:
                outcome = self._failed(work, f"restore worker failed: {error}")
            self._results.put(outcome)

    @staticmethod
    def _failed(work: Work, why: str) -> BatchResult:
        outcome = BatchResult()
        if isinstance(work, SubtreeJob):  # which of its files were written is not known
            outcome.errors = [(display(path), why) for _, path, _ in work.roots]
            return outcome
        outcome.errors = [(job.display, why) for job in work.files]
        outcome.failed = {job.token: why for job in work.files if job.token >= 0}
        return outcome

    def _drain(self, *, block: bool) -> None:
        """Count the answers that arrived (all of them, waiting for the rest, when block)."""
        if self._draining:  # planning a worker's hard-linked files queues batches: no recursion
            return
        self._draining = True
        try:
            while self._outstanding if block else True:
                try:
                    outcome = self._results.get(block=block)
                except queue.Empty:
                    return
                if isinstance(outcome, Walked):
                    self._walked(outcome)
                else:
                    self._outstanding -= 1
                    self._merge(outcome)
        finally:
            self._draining = False

    def _walked(self, walked: Walked) -> None:
        """Take in a worker's walk of a subtree and queue the directories it left."""
        planner = self.planner
        planner.created_directories.extend(_directory(record) for record in walked.directories)
        planner.file_count += walked.files
        planner.byte_count += walked.bytes
        planner.others += walked.others
        self.result.errors.extend(walked.errors)
        for directory, node, gid in walked.linked:
            planner.plan_linked(directory, node, gid)
        roots = walked.deferred
        if roots:
            size = -(-len(roots) // min(self.workers, len(roots)))  # one job per worker
            for start in range(0, len(roots), size):
                self._put(self._job(roots[start : start + size]))
        self.merged()

    def _merge(self, outcome: BatchResult) -> None:
        self.result.files_restored += outcome.files_restored
        self.result.dirs_restored += outcome.directories
        self.result.bytes_written += outcome.bytes_written
        self.result.errors.extend(outcome.errors)
        for token, why in outcome.failed.items():
            self.primaries[token].failed = why
        self.merged()

    def finish(self) -> None:
        """Restore whatever is still queued and wait for every batch and subtree."""
        if self._batch.files:
            self._submit(self._batch)
            self._batch = Batch()
        umask = process_umask()
        memory = BatchMemory()
        for batch in self._waiting:  # the restore stayed small: no workers
            self._merge(run_batch(self.repo.store, self.repo.codec, self.directories, batch, umask, memory))
        self._waiting = []
        if self._threads:
            while self._outstanding:
                self._drain(block=True)
                if self._batch.files:  # hard-linked files a worker passed on
                    self._submit(self._batch)
                    self._batch = Batch()
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join()
        self.close()

    def close(self) -> None:
        """Stop the workers; after an error, queued work is dropped and workers killed."""
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
    # Run the imported module's code: messages must be its classes, not __main__'s copies.
    from backvault.sources.filesystem import restore_workers

    restore_workers._serve()
    # Answers are flushed as they are sent; tearing the interpreter down would only keep the
    # restore waiting (~0.1 s to free the index and the trees read).
    sys.stderr.flush()
    os._exit(0)
