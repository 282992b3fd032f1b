"""Backing up whole subtrees in forked worker processes, so a backup uses every core.

The per-file work of a backup (open, read, hash, compress, seal, tree encoding) is Python
bound by the GIL: threads do not scale it (docs/benchmarks.md). So the backup process
plans a frontier of directories a few levels down (plan_units), forks one worker per core,
and hands the directories of the frontier to the next idle worker, in batches while many
wait. A worker walks each with its own Walker and pack builder, exactly as the backup
process would, and sends back the tree id with its counts, errors and directory-cache
entries. The backup process walks the levels above the frontier itself and uses the
workers' results when it reaches them.

Workers are forked (not spawned) so they share the unlocked repository, the loaded
index and the directory cache without sending the master key anywhere; they are forked
before the walk starts its threads (only the lock refresher, which sleeps between writes of
the lock file, is running). Blobs are deduplicated across processes by
a shared ClaimTable. Each worker writes its own packs and index objects; the backup
process commits the snapshot only after every worker has flushed, so the write order
packs -> index -> snapshot still holds. Workers die with the backup process (SIGKILL on
parent death), so a killed backup leaves nothing running.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from backvault.repo.writer import WriterReport
from backvault.sources.filesystem.walker import SubtreeResult, Walker

__all__ = ["SubtreeWorkers", "Unit", "WorkerError", "plan_units"]

_PR_SET_PDEATHSIG = 1
# Levels below a backed-up path that planning may list to find enough directories.
_MAX_DEPTH = 4
# Units are sent in batches of at most (waiting units / (this x workers)).
_BATCHES_PER_WORKER = 32


class WorkerError(Exception):
    """A worker process failed or died; the backup cannot be committed."""


@dataclass(frozen=True)
class Unit:
    """A directory handed to a worker: where it is and what the parent snapshot had there."""

    root: bytes  # the backed-up path it lies under, as Walker.root (excludes are relative to it)
    path: bytes
    old_subtree: str | None
    root_dev: int


@dataclass(frozen=True)
class PlannedRoot:
    """A backed-up directory to plan below."""

    root: bytes  # Walker.root: b"" for "/"
    open_path: bytes  # what to open: b"/" for "/"
    dev: int
    old_subtree: str | None


def _subdirectories(
    walker: Walker, directory: Unit, open_path: bytes, old: Callable[[Unit, bytes], str | None]
) -> list[Unit] | None:
    """The directories directly below one (not excluded, same device with one_file_system)."""
    try:
        with os.scandir(open_path) as entries:
            found = [
                (entry.name, entry.stat(follow_symlinks=False).st_dev)
                for entry in entries
                if entry.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return None  # the walk reports it
    units: list[Unit] = []
    for name, dev in found:
        child = directory.path + b"/" + name
        if walker.excluded(name, child, directory.root) or (
            walker.one_file_system and dev != directory.root_dev
        ):
            continue
        units.append(Unit(directory.root, child, old(directory, name), directory.root_dev))
    return units


def plan_units(
    walker: Walker, roots: Sequence[PlannedRoot], wanted: int, old: Callable[[Unit, bytes], str | None]
) -> list[Unit]:
    """Pick directories to hand to workers: level by level until there are `wanted`, in walk order.

    A directory with subdirectories is split into them (its own files stay with the walking
    process); one without stays whole. old(unit, name) gives the parent snapshot's subtree id
    of a subdirectory, as the walker will compute it (a mismatch only means it walks that
    directory itself).
    """
    frontier = [Unit(root.root, root.root, root.old_subtree, root.dev) for root in roots]
    opened = {root.root: root.open_path for root in roots}
    for depth in range(_MAX_DEPTH):
        if len(frontier) >= wanted and depth:
            break
        expanded: list[Unit] = []
        for unit in frontier:
            below = _subdirectories(walker, unit, opened.get(unit.path, unit.path), old)
            if below is None:
                continue
            expanded.extend(below or [unit])
        if expanded == frontier:
            break
        frontier = expanded
    # A backed-up path itself is walked by the backup process (which never asks for it).
    units = [unit for unit in frontier if unit.path not in opened]
    order = {root.root: index for index, root in enumerate(roots)}
    return sorted(units, key=lambda unit: (order[unit.root], unit.path.split(b"/")))


def _die_with_parent(prctl: Any, parent: int) -> None:
    """Ask the kernel to SIGKILL this process when the backup process dies."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)


def _serve(
    connection: Connection,
    other_end: Connection,
    prctl: Any,
    parent: int,
    make_walker: Callable[[ThreadPoolExecutor], Walker],
    threads: int,
) -> None:
    """A worker's life: back up units until told to stop, then flush and send the writer's stats."""
    other_end.close()
    _die_with_parent(prctl, parent)
    # What came from the backup process is never garbage here: keep the collector off it
    # (scanning it also copied every page it touched). Nor is what the walk makes (nodes,
    # trees, chunk ids: no reference cycles), so the collector stays off in this process.
    gc.freeze()
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the backup process's to handle
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="backup")
    walker = make_walker(pool)
    walker.progress = None  # the backup process reports progress
    try:
        while (units := connection.recv()) is not None:
            try:
                results = [
                    walker.back_up_subtree(unit.root, unit.path, unit.old_subtree, unit.root_dev)
                    for unit in units
                ]
            except Exception as error:  # sent to the backup process, which fails the backup
                connection.send(("failed", f"{type(error).__name__}: {error}"))
                return
            connection.send(("done", results))
        pool.shutdown(wait=True)
        connection.send(("finished", walker.writer.report()))
    except EOFError:
        return  # the backup process is gone
    except Exception as error:
        connection.send(("failed", f"{type(error).__name__}: {error}"))


class _Board:
    """Results of the units handed out, posted by the dispatcher and waited for by the walk.

    One condition for all (a Future per unit cost more than some units' whole walk).
    """

    def __init__(self) -> None:
        self._results: dict[tuple[bytes, bytes], SubtreeResult] = {}
        self._failure: WorkerError | None = None
        self._changed = threading.Condition()

    def post(self, key: tuple[bytes, bytes], result: SubtreeResult) -> None:
        with self._changed:
            self._results[key] = result
            self._changed.notify_all()

    def fail(self, failure: WorkerError) -> None:
        with self._changed:
            self._failure = failure
            self._changed.notify_all()

    def wait(self, key: tuple[bytes, bytes], timeout: float | None) -> SubtreeResult:
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._results or self._failure is not None, timeout):
                raise TimeoutError
            if key in self._results:
                return self._results.pop(key)
            assert self._failure is not None
            raise self._failure


@dataclass(frozen=True)
class _Pending:
    """The walk's handle on one unit's result (walker.PendingSubtree)."""

    board: _Board
    key: tuple[bytes, bytes]

    def result(self, timeout: float | None = None) -> SubtreeResult:
        return self.board.wait(self.key, timeout)


class SubtreeWorkers:
    """Worker processes forked from the backup; implements walker.Handoff for the walking process."""

    def __init__(self, count: int, make_walker: Callable[[ThreadPoolExecutor], Walker], threads: int) -> None:
        context = multiprocessing.get_context("fork")
        # Looked up before forking: a child must not dlopen (another thread may hold the loader lock).
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._processes: list[Any] = []
        self._connections: list[Connection] = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(theirs, ours, prctl, os.getpid(), make_walker, threads), daemon=True
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            self._connections.append(ours)
        # By (root, path): two backed-up paths may overlap, and excludes are relative to the root.
        self._board = _Board()
        self._untaken: dict[tuple[bytes, bytes], Unit] = {}
        self._dispatcher: threading.Thread | None = None
        self._failure: WorkerError | None = None

    def start(self, units: Sequence[Unit]) -> None:
        """Hand out units in this order, each to the next idle worker."""
        for unit in units:
            self._untaken.setdefault((unit.root, unit.path), unit)
        queue = deque(self._untaken.values())
        self._dispatcher = threading.Thread(
            target=self._dispatch, args=(queue,), name="subtrees", daemon=True
        )
        self._dispatcher.start()

    def take(self, root: bytes, path: bytes, old_subtree: str | None) -> _Pending | None:
        """The result for path, if it was handed out with the same root and parent subtree (once)."""
        unit = self._untaken.pop((root, path), None)
        if unit is None or unit.old_subtree != old_subtree:
            return None
        return _Pending(self._board, (root, path))

    def _dispatch(self, queue: deque[Unit]) -> None:
        idle = list(self._connections)
        busy: dict[Connection, list[Unit]] = {}
        try:
            while queue or busy:
                while queue and idle:
                    # Guided self-scheduling: big batches while many units wait (thousands of
                    # small directories cost a round trip each), single units at the end.
                    size = max(1, len(queue) // (_BATCHES_PER_WORKER * len(self._connections)))
                    batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                    connection = idle.pop()
                    connection.send(batch)
                    busy[connection] = batch
                for ready in wait(list(busy)):
                    assert isinstance(ready, Connection)
                    batch = busy.pop(ready)
                    kind, payload = ready.recv()
                    if kind != "done":
                        paths = ", ".join(os.fsdecode(unit.path) for unit in batch[:3])
                        raise WorkerError(f"backing up {paths} failed: {payload}")
                    for unit, result in zip(batch, payload, strict=True):
                        self._board.post((unit.root, unit.path), result)
                    idle.append(ready)
        except Exception as error:  # whatever it is, nobody may wait forever for a result
            failure = error if isinstance(error, WorkerError) else WorkerError(f"worker lost: {error!r}")
            # Its claimed blobs may never be stored: the whole backup fails, not just its units.
            self._failure = failure
            self._board.fail(failure)

    def finish(self) -> list[WriterReport]:
        """Stop the workers once every unit is done; returns what each stored."""
        if self._dispatcher is not None:
            self._dispatcher.join()
        if self._failure is not None:
            raise self._failure
        try:
            for connection in self._connections:
                connection.send(None)  # all at once: their last packs are written in parallel
            replies = [connection.recv() for connection in self._connections]
        except (EOFError, OSError):
            raise WorkerError("a backup worker process died before writing its last pack") from None
        stats: list[WriterReport] = []
        for kind, payload in replies:
            if kind != "finished":
                raise WorkerError(f"a backup worker failed: {payload}")
            stats.append(payload)
        for process in self._processes:
            process.join()
        return stats

    def kill(self) -> None:
        """Stop every worker at once (the backup failed or was interrupted)."""
        for process in self._processes:
            if process.is_alive():
                process.kill()
        for process in self._processes:
            process.join()
        for connection in self._connections:
            connection.close()
