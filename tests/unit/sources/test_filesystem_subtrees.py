"""Backups that hand whole subtrees to forked worker processes (sources/filesystem/subtrees.py)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from filesystem_helpers import PASSWORD, assert_same_tree

from backvault.repo.blob import BlobType
from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.sources.filesystem import reading
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.sources.filesystem.subtrees import WorkerError
from backvault.sources.filesystem.walker import Walker

SHARED = os.urandom(300_000)  # one chunk, the same in every subtree


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for top in range(3):
        for sub in range(4):
            directory = root / f"top{top}" / f"sub{sub}"
            (directory / "deeper").mkdir(parents=True)
            (directory / "same.bin").write_bytes(SHARED)
            (directory / "own.txt").write_bytes(f"{top}/{sub} ".encode() * (100 + sub))
            (directory / "deeper" / "big.bin").write_bytes(os.urandom(700_000 + top * 1000 + sub))
    (root / "top0" / "file-above-the-frontier").write_bytes(b"walked by the backup process")
    os.symlink("top1/sub1/own.txt", root / "link")
    os.link(root / "top0" / "sub0" / "own.txt", root / "top2" / "sub3" / "hard-link-across-subtrees")
    return root


def _stored_blobs(repo: Repository) -> list[bytes]:
    """Every blob of every pack in the repository, repeats included."""
    fresh = Repository.open(repo.store, PASSWORD)
    return [blob for blobs in fresh.index.packs.values() for blob in blobs]


def test_a_backup_in_several_processes_restores_identically_and_checks_clean(
    repo: Repository, source: Path, tmp_path: Path
) -> None:
    snapshot = backup_paths(repo, [str(source)], processes=2)
    assert snapshot.summary["files_new"] == 3 * 4 * 3 + 2
    assert snapshot.summary["processes"] == 3  # this one and two workers
    assert not snapshot.partial
    # The workers' packs are known to this process's repository object right away.
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    assert check(Repository.open(repo.store, PASSWORD), read_data_fraction=1.0).ok
    assert multiprocessing.active_children() == []


def test_a_chunk_met_by_several_workers_is_stored_once(repo: Repository, source: Path) -> None:
    snapshot = backup_paths(repo, [str(source)], processes=2)
    stored = _stored_blobs(repo)
    assert len(stored) == len(set(stored))
    shared = repo.codec.blob_id(BlobType.DATA, SHARED)
    assert stored.count(shared) == 1
    assert snapshot.summary["chunks_new"] == len(stored)


@pytest.mark.parametrize("anchored", [True, False])
def test_workers_never_read_excluded_directories(repo: Repository, source: Path, anchored: bool) -> None:
    secret = os.urandom(5000)
    (source / "top1" / "sub2" / "secret.key").write_bytes(secret)
    excluded = source / "top1" / "sub2"
    # "/top1/sub2" is anchored at the backed-up path; the absolute path matches too.
    pattern = "/top1/sub2" if anchored else str(excluded)
    snapshot = backup_paths(repo, [str(source)], excludes=[pattern], processes=2)
    assert snapshot.summary["files_new"] == 3 * 4 * 3 + 2 - 3
    stored = _stored_blobs(repo)
    for content in (secret, (excluded / "deeper" / "big.bin").read_bytes()):  # below the frontier too
        assert repo.codec.blob_id(BlobType.DATA, content) not in stored


def test_an_incremental_backup_in_several_processes_keeps_unchanged_trees(
    repo: Repository, source: Path, tmp_path: Path
) -> None:
    first = backup_paths(repo, [str(source)], processes=2)
    second = backup_paths(repo, [str(source)], parent=first, processes=2)
    assert second.tree == first.tree and second.summary["bytes_read"] == 0
    changed = source / "top2" / "sub1" / "deeper" / "new.txt"
    changed.write_bytes(b"new")
    third = backup_paths(repo, [str(source)], parent=second, processes=2)
    assert third.summary["files_new"] == 1 and third.summary["bytes_read"] == 3
    assert third.summary["files_unmodified"] == first.summary["files_new"]
    # Without the directory cache the old trees are read from the repository instead.
    fourth = backup_paths(repo, [str(source)], parent=third, processes=2, use_cache=False)
    assert fourth.tree == third.tree and fourth.summary["bytes_read"] == 0
    assert restore_snapshot(repo, third, str(tmp_path / "restore"), workers=0).errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))


def test_a_file_a_worker_cannot_read_is_reported_and_the_snapshot_is_partial(
    repo: Repository, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = source / "top1" / "sub0" / "unreadable"
    unreadable.write_bytes(b"no")
    real_open = reading.open_noatime

    def refusing(name: bytes, flags: int, dir_fd: int | None) -> int:
        if name == b"unreadable":
            raise PermissionError(13, "Permission denied")
        return real_open(name, flags, dir_fd)

    monkeypatch.setattr(reading, "open_noatime", refusing)  # the forked workers inherit it
    snapshot = backup_paths(repo, [str(source)], processes=2)
    assert snapshot.partial
    assert snapshot.errors == [{"path": str(unreadable), "error": "Permission denied"}]
    assert snapshot.summary["files_new"] == 3 * 4 * 3 + 2


def test_a_failing_worker_fails_the_backup_and_commits_nothing(
    repo: Repository, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Walker, "back_up_subtree", broken)  # the forked workers inherit it
    with pytest.raises(WorkerError, match="disk on fire"):
        backup_paths(repo, [str(source)], processes=2)
    assert repo.list_snapshots() == []
    assert multiprocessing.active_children() == []


def test_overlapping_paths_are_each_backed_up_whole(repo: Repository, source: Path, tmp_path: Path) -> None:
    # top1 lies below src: its subdirectories are planned from both backed-up paths.
    snapshot = backup_paths(repo, [str(source), str(source / "top1")], excludes=["/sub3"], processes=2)
    assert snapshot.summary["processes"] == 3
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    # "/sub3" is anchored at each backed-up path: src/sub3 does not exist, top1/sub3 is left out.
    assert sorted(os.listdir(tmp_path / "restore" / "top1")) == ["sub0", "sub1", "sub2"]
    assert sorted(os.listdir(tmp_path / "restore" / "src" / "top1")) == ["sub0", "sub1", "sub2", "sub3"]


def test_the_index_is_read_before_forking_only_when_something_changed(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)], processes=2)
    unchanged = Repository.open(repo.store, PASSWORD, load_index=False)
    second = backup_paths(unchanged, [str(source)], parent=first, processes=2)
    assert second.tree == first.tree
    assert not unchanged.index_loaded  # neither here nor, by inheritance, in the workers
    (source / "top0" / "new.txt").write_bytes(b"new")
    changed = Repository.open(repo.store, PASSWORD, load_index=False)
    third = backup_paths(changed, [str(source)], parent=second, processes=2)
    assert third.summary["files_new"] == 1 and third.summary["chunks_reused"] == 0
    # Dropped at the end (the workers added packs to the repository); read again when used.
    assert not changed.index_loaded and changed.has_chunk(third.tree)


def test_thousands_of_small_subtrees_are_handed_out_in_batches(repo: Repository, tmp_path: Path) -> None:
    source = tmp_path / "wide"
    for index in range(3000):
        (source / f"d{index:04d}").mkdir(parents=True)
        (source / f"d{index:04d}" / "f").write_bytes(b"%d" % index)
    snapshot = backup_paths(repo, [str(source)], processes=2)
    assert snapshot.summary["processes"] == 3
    assert snapshot.summary["files_new"] == 3000 and snapshot.summary["dirs"] == 3001
    assert restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0).errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "wide"))
