"""Restore a snapshot's trees into a directory.

The restore plans first (creating directories, links and special files while it
walks the trees, which restore_trees.py reads a window of their pack at a time), and
hands the regular files to a batch runner in batches. Each batch's chunks are read
once, in pack order, and written to every position that needs them (restore_write.py).
Big restores run in worker processes (restore_workers.py), which are handed whole
subtrees: they walk, create and write those themselves, in parallel. All-zero chunks
are skipped so sparse files stay sparse.
Everything is created relative to an open parent directory with O_NOFOLLOW, so a
path longer than PATH_MAX works and a crafted snapshot cannot write outside the target.

Ownership is restored by numeric uid/gid (like ``tar --numeric-owner``), and only
when running as root; the stored user and group names are informational.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from backvault.repo.memory import tune_malloc
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.filesystem.restore_plan import Directories, Planner
from backvault.sources.filesystem.restore_workers import BatchRunner, default_workers
from backvault.sources.filesystem.restore_write import RestoreResult, data_ranges

__all__ = ["RestoreProgress", "RestoreResult", "data_ranges", "restore_snapshot"]

_PROGRESS_INTERVAL = 0.25

_collector_lock = threading.Lock()
_collector_pauses = 0  # restores running in this process
_collector_was_enabled = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while restores run in this process.

    Planning keeps hundreds of thousands of objects alive (the index, nodes, batches) and
    makes no reference cycles, so the collector would rescan them again and again for
    nothing: a quarter of the planning process's CPU. Objects without cycles are still
    freed at once. Concurrent restores share one pause; the last one to end re-enables
    the collector if it was enabled when the first began.
    """
    global _collector_pauses, _collector_was_enabled
    with _collector_lock:
        if _collector_pauses == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_pauses += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses -= 1
            if _collector_pauses == 0 and _collector_was_enabled:
                gc.enable()


@dataclass
class RestoreProgress:
    """Progress of a restore, passed to the progress callback."""

    files: int
    files_total: int
    bytes_written: int
    bytes_total: int
    errors: int
    elapsed: float


class _Reporter:
    """Calls the progress callback, throttled, with the planner's running totals."""

    def __init__(
        self, planner: Planner, result: RestoreResult, progress: Callable[[RestoreProgress], None] | None
    ) -> None:
        self.planner = planner
        self.result = result
        self.progress = progress
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
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


def restore_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    target: str,
    *,
    includes: Sequence[str] = (),
    progress: Callable[[RestoreProgress], None] | None = None,
    workers: int | None = None,
) -> RestoreResult:
    """Restore snapshot (or only the included paths) below target; errors are collected, not raised.

    workers: processes for a big restore (None: one per core; 0 or 1: all in this process).
    """
    tune_malloc()
    os.makedirs(target, exist_ok=True)
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    result = RestoreResult()
    directories = Directories(target_fd)
    planner = Planner(repo, directories, result.errors)
    reporter = _Reporter(planner, result, progress)
    count = default_workers() if workers is None else workers
    runner = BatchRunner(repo, directories, target, result, count, reporter, planner)
    planner.add_file = runner.add
    planner.hand_off = runner.hand_off
    lock = repo.lock_and_refresh()  # a concurrent prune must not sweep the packs we read
    try:
        if not includes:
            summary = snapshot.summary
            files = sum(summary.get(kind, 0) for kind in ("files_new", "files_changed", "files_unmodified"))
            runner.expect(files, summary.get("total_bytes", 0))
        with _collector_paused():
            # A whole snapshot with workers running goes to them from the top: this process
            # then never reads the index unless there are hard links to match up.
            if includes or not runner.hand_off(snapshot.tree, b"", planner.target_gid):
                planner.plan(snapshot.tree, includes)
            runner.finish()
            planner.link_all()
            result.dirs_restored += planner.apply_directory_metadata()
        result.others_restored = planner.others
        result.files_restored += planner.linked
    finally:
        runner.close()
        lock.release()
        directories.close()
    reporter(force=True)
    return result
