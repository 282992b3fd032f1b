"""Backups whose small files are read and encoded by worker processes store exactly what the
in-process backup stores.

The thresholds are lowered (encoders_after, BATCH_FILES) so that these small trees use
workers and many batches.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filesystem_helpers import PASSWORD, assert_same_tree, new_repository

from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.filesystem import encoders
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.encoders import EncoderError, EncoderPool
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.sources.filesystem.worker_pipes import WorkerProcess
from backvault.storage.local import LocalStore


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WorkerProcess]]:
    """Cut batches of three files; the list collects the worker processes started."""
    monkeypatch.setattr(encoders, "BATCH_FILES", 3)
    processes: list[WorkerProcess] = []
    original = WorkerProcess.__init__

    def spy(self: WorkerProcess, module: str, setup: object) -> None:
        original(self, module, setup)
        processes.append(self)

    monkeypatch.setattr(WorkerProcess, "__init__", spy)
    yield processes
    # However the backup ended, no worker is left running.
    assert all(process.process.poll() is not None for process in processes)


def build_tree(root: Path) -> None:
    """Directories of small files, content repeated across directories, hard links, a big file."""
    shared = os.urandom(3000)
    for number in range(6):
        directory = root / f"dir{number}" / "leaf"
        directory.mkdir(parents=True)
        for index in range(9):
            (directory.parent / f"f{index}").write_bytes(os.urandom(100 + index * 997))
        (directory / "same").write_bytes(shared)
        (directory / "empty").write_bytes(b"")
        os.symlink("../f0", directory / "link")
    (root / "dir1" / "big.bin").write_bytes(os.urandom(1_500_000))
    os.link(root / "dir0" / "f1", root / "dir5" / "hard-f1")
    os.setxattr(root / "dir2" / "f3", "user.note", b"kept")
    # Under relatime a readlink moves a symlink's atime only while it is not after its ctime:
    # moved once here, a tick after creation, so that two backups record the same nodes.
    time.sleep(0.05)
    for link in root.glob("*/leaf/link"):
        os.readlink(link)


def twin_repositories(tmp_path: Path) -> tuple[Repository, Repository]:
    """Two empty repositories with the same id and keys (so the same chunk and tree ids)."""
    first = new_repository(str(tmp_path / "repo-a"))
    shutil.copytree(tmp_path / "repo-a", tmp_path / "repo-b")
    second = Repository.open(LocalStore(str(tmp_path / "repo-b")), PASSWORD)
    return first, second


def stored_blob_ids(repo: Repository) -> list[bytes]:
    """Every blob entry of every pack (a blob stored twice appears twice)."""
    repo.load_index()
    return [blob_id for ids in repo.index.packs.values() for blob_id in ids]


def test_workers_store_the_same_snapshot_as_the_in_process_backup(
    tmp_path: Path, started: list[WorkerProcess]
) -> None:
    source = tmp_path / "src"
    build_tree(source)
    in_process, with_workers = twin_repositories(tmp_path)
    expected = backup_paths(in_process, [str(source)], encoders=0, use_cache=False)
    assert started == []
    snapshot = backup_paths(with_workers, [str(source)], encoders=2, encoders_after=5, use_cache=False)
    assert len(started) == 2 and os.getpid() not in [worker.process.pid for worker in started]
    assert snapshot.tree == expected.tree
    assert not snapshot.partial
    for key in ("files_new", "bytes_read", "total_bytes", "chunks_new", "chunks_reused", "bytes_stored"):
        assert snapshot.summary[key] == expected.summary[key], key
    # The shared content is stored once, although several workers encoded it.
    ids = stored_blob_ids(with_workers)
    assert len(ids) == len(set(ids)) == len(stored_blob_ids(in_process))
    target = tmp_path / "restore"
    assert restore_snapshot(with_workers, snapshot, str(target), workers=0).errors == []
    assert_same_tree(str(source), str(target / "src"))
    assert os.getxattr(target / "src" / "dir2" / "f3", "user.note") == b"kept"
    assert check(with_workers, read_data_fraction=1.0).ok


def test_small_backups_start_no_workers(tmp_path: Path, started: list[WorkerProcess]) -> None:
    source = tmp_path / "src"
    build_tree(source)
    backup_paths(new_repository(str(tmp_path / "repo")), [str(source)], encoders=2, use_cache=False)
    assert started == []


def _change_before_read(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    """Between the walker's lstat and the worker's open: one file vanishes, one becomes a FIFO,
    one is replaced by another file."""
    original = EncoderPool.submit

    def change_then_submit(self: EncoderPool, path: bytes, st: os.stat_result) -> object:
        name = os.path.relpath(path, os.fsencode(source))
        if name == b"dir3/f4":
            os.unlink(path)
        elif name == b"dir3/f5":
            os.unlink(path)
            os.mkfifo(path)
        elif name == b"dir4/f2":
            os.rename(os.fsencode(source / "dir4" / "f6"), path)
        return original(self, path, st)

    monkeypatch.setattr(EncoderPool, "submit", change_then_submit)


def test_files_changed_before_a_worker_opens_them_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[WorkerProcess]
) -> None:
    source = tmp_path / "src"
    build_tree(source)
    _change_before_read(monkeypatch, source)
    repo = new_repository(str(tmp_path / "repo"))
    snapshot = backup_paths(repo, [str(source)], encoders=2, encoders_after=1, use_cache=False)
    assert len(started) == 2
    assert snapshot.partial
    errors = {error["path"]: error["error"] for error in snapshot.errors}
    assert errors == {
        str(source / "dir3" / "f4"): "vanished during backup (no such file or directory)",
        str(source / "dir3" / "f5"): "changed type during backup",
        str(source / "dir4" / "f2"): "changed type during backup",
        # listed before the rename, gone when its turn came
        str(source / "dir4" / "f6"): "vanished during backup (no such file or directory)",
    }
    stored = Repository.open(LocalStore(repo.store.location), PASSWORD).find_snapshot(snapshot.id)
    assert isinstance(stored, Snapshot) and stored.partial and stored.errors == snapshot.errors
    assert check(repo).ok


def test_a_killed_worker_fails_the_backup_and_leaves_a_clean_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[WorkerProcess]
) -> None:
    source = tmp_path / "src"
    build_tree(source)
    original = EncoderPool.submit
    submitted: list[bytes] = []

    def kill_midway(self: EncoderPool, path: bytes, st: os.stat_result) -> object:
        submitted.append(path)
        if len(submitted) == 20:
            os.kill(started[0].process.pid, signal.SIGKILL)
        return original(self, path, st)

    monkeypatch.setattr(EncoderPool, "submit", kill_midway)
    repo = new_repository(str(tmp_path / "repo"))
    with pytest.raises(EncoderError, match="encoder worker exited"):
        backup_paths(repo, [str(source)], encoders=2, encoders_after=1, use_cache=False)
    assert len(submitted) >= 20
    assert repo.list_snapshots() == []
    reopened = Repository.open(LocalStore(repo.store.location), PASSWORD)
    report = check(reopened, read_data_fraction=1.0)
    assert report.ok, report.problems
    # What was stored before the failure is reused; the next backup completes.
    snapshot = backup_paths(reopened, [str(source)], encoders=2, encoders_after=1, use_cache=False)
    assert not snapshot.partial
    assert check(reopened).ok
