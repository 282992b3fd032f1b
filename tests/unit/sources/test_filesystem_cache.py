"""The files cache: unchanged files come from the parent snapshot without being read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filesystem_helpers import PASSWORD

from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Tree
from backvault.sources.filesystem.backup import backup_paths, latest_parent
from backvault.sources.filesystem.backup_cache import cache_path, load_cache
from backvault.sources.filesystem.restore import restore_snapshot


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for directory in range(4):
        (root / f"dir{directory}" / "nested").mkdir(parents=True)
        for index in range(10):
            (root / f"dir{directory}" / f"file{index}").write_bytes(os.urandom(1000 + index))
        (root / f"dir{directory}" / "nested" / "big").write_bytes(os.urandom(1_500_000))
    os.symlink("dir0/file0", root / "link")
    os.link(root / "dir0" / "file1", root / "hard")
    return root


def test_an_unchanged_tree_reads_nothing_and_keeps_its_tree_ids(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)])
    assert first.summary["files_new"] == 4 * 11 + 1
    assert first.summary["bytes_read"] == first.summary["total_bytes"] - 1001  # the hard link is read once
    second = backup_paths(repo, [str(source)], parent=first)
    assert second.parent == first.id
    assert second.summary["bytes_read"] == 0
    assert second.summary["files_unmodified"] == first.summary["files_new"]
    assert second.summary["files_new"] == second.summary["files_changed"] == 0
    assert second.summary["chunks_new"] == 0
    assert second.summary["total_bytes"] == first.summary["total_bytes"]
    assert second.tree == first.tree  # nothing changed, not even an access time


def test_a_changed_mtime_or_content_is_read_again(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)])
    touched = source / "dir1" / "file3"
    before = touched.stat()
    os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    second = backup_paths(repo, [str(source)], parent=first)
    assert second.summary["files_changed"] == 1
    assert second.summary["bytes_read"] == before.st_size
    assert second.summary["chunks_new"] == 3  # trees of dir1, src and the root; the content deduplicated
    # Same size, same mtime, new content: only ctime tells, and it is checked.
    edited = source / "dir2" / "nested" / "big"
    stamp = edited.stat()
    edited.write_bytes(os.urandom(stamp.st_size))
    os.utime(edited, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    third = backup_paths(repo, [str(source)], parent=second)
    assert third.summary["files_changed"] == 1
    assert third.summary["bytes_read"] == stamp.st_size
    assert third.summary["files_unmodified"] == first.summary["files_new"] - 1
    target = source.parent / "restore"
    assert restore_snapshot(repo, third, str(target)).errors == []
    assert (target / "src" / "dir2" / "nested" / "big").read_bytes() == edited.read_bytes()


def test_without_a_parent_everything_is_read(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)])
    again = backup_paths(repo, [str(source)])
    assert again.summary["bytes_read"] == first.summary["bytes_read"]
    assert again.summary["files_new"] == first.summary["files_new"]
    # Content deduplicates; at most the trees up from the symlink, whose atime the first readlink moved.
    assert again.summary["chunks_new"] <= 2


def test_cached_content_whose_chunks_are_gone_is_read_again(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)])
    # A parent whose dir3/file0 points at a chunk the repository does not hold.
    root = repo.load_tree(first.tree)
    top = repo.load_tree(root.nodes[0].subtree or "")
    dir3 = next(node for node in top.nodes if node.name == b"dir3")
    listing = repo.load_tree(dir3.subtree or "")
    next(node for node in listing.nodes if node.name == b"file0").content = ["00" * 32]
    with repo.writer() as writer:
        dir3.subtree = writer.save_tree(Tree(listing.nodes))
        root.nodes[0].subtree = writer.save_tree(Tree(top.nodes))
        forged_root = writer.save_tree(Tree(root.nodes))
    parent = Snapshot(forged_root, first.paths, first.hostname, first.username, first.time, id="f" * 64)
    second = backup_paths(repo, [str(source)], parent=parent)
    assert second.summary["files_changed"] == 1
    assert second.summary["bytes_read"] == 1000
    assert second.tree == first.tree


def test_latest_parent_picks_the_newest_snapshot_of_the_same_paths(repo: Repository, source: Path) -> None:
    assert latest_parent(repo, [str(source)]) is None
    first = backup_paths(repo, [str(source)])
    backup_paths(repo, [str(source / "dir0")])
    found = latest_parent(repo, [str(source) + "/"])
    assert found is not None and found.id == first.id


def count_tree_loads(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every tree id the repository is asked to load from now on."""
    loaded: list[str] = []
    original = repo.load_tree

    def counting(tree_id: str) -> Tree:
        loaded.append(tree_id)
        return original(tree_id)

    monkeypatch.setattr(repo, "load_tree", counting)
    return loaded


def test_the_directory_cache_spares_loading_unchanged_trees(
    repo: Repository, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = backup_paths(repo, [str(source)], processes=1)
    loaded = count_tree_loads(repo, monkeypatch)
    second = backup_paths(repo, [str(source)], parent=first, processes=1)
    assert second.tree == first.tree
    assert loaded == []  # not even the parent's root tree: the cache knows the root directory
    (source / "dir2" / "nested" / "new").write_bytes(b"new file")
    loaded.clear()
    third = backup_paths(repo, [str(source)], parent=second, processes=1)
    assert third.summary["files_new"] == 1
    assert third.summary["bytes_read"] == 8
    assert third.summary["files_unmodified"] == second.summary["files_unmodified"]
    # dir2/nested which changed, then its parents rebuilt on the way up.
    assert len(loaded) == 3
    target = source.parent / "restore"
    assert restore_snapshot(repo, third, str(target)).errors == []
    assert (target / "src" / "dir2" / "nested" / "new").read_bytes() == b"new file"
    assert (target / "src" / "dir3" / "file9").read_bytes() == (source / "dir3" / "file9").read_bytes()


def test_an_unchanged_backup_never_reads_the_index(repo: Repository, source: Path) -> None:
    first = backup_paths(repo, [str(source)])
    fresh = Repository.open(repo.store, PASSWORD, load_index=False)
    second = backup_paths(fresh, [str(source)], parent=first)
    assert second.tree == first.tree and second.summary["bytes_read"] == 0
    assert not fresh.index_loaded
    assert len(list(repo.store.list("data/"))) == len(list(fresh.store.list("index/")))  # no new pack
    (source / "dir1" / "file3").write_bytes(b"changed")
    (source / "dir0" / "copy").write_bytes((source / "dir3" / "file9").read_bytes())
    third = backup_paths(fresh, [str(source)], parent=second)
    # New content must be deduplicated against the index: the copy's content is found there.
    assert third.summary["chunks_reused"] == 1
    target = source.parent / "restore"
    assert restore_snapshot(fresh, third, str(target)).errors == []
    assert (target / "src" / "dir0" / "copy").read_bytes() == (source / "dir3" / "file9").read_bytes()


def test_reading_the_tree_changes_no_tree_unless_access_times_are_recorded(
    repo: Repository, source: Path
) -> None:
    first = backup_paths(repo, [str(source)])
    file = source / "dir1" / "file3"
    read_before = os.stat(file).st_atime_ns
    for directory, _, names in os.walk(source):  # what `grep -r` does: every atime moves once
        for name in names:
            Path(directory, name).read_bytes()
    assert os.stat(file).st_atime_ns != read_before  # relatime moved it: a real access-time change
    second = backup_paths(repo, [str(source)], parent=first)
    assert second.tree == first.tree and second.summary["chunks_new"] == 0
    target = source.parent / "restore"
    assert restore_snapshot(repo, second, str(target)).errors == []
    restored = os.stat(target / "src" / "dir1" / "file3")
    assert restored.st_atime_ns == restored.st_mtime_ns == os.stat(file).st_mtime_ns
    # Recorded on request: then the same reads make new trees.
    third = backup_paths(repo, [str(source)], parent=second, with_atime=True)
    for directory, _, names in os.walk(source):
        for name in names:
            Path(directory, name).read_bytes()
    fourth = backup_paths(repo, [str(source)], parent=third, with_atime=True)
    assert third.tree != second.tree
    assert os.stat(file).st_atime_ns in {
        node.atime_ns for node in repo.load_tree(_subtree(repo, fourth, b"dir1")).nodes
    }


def _subtree(repo: Repository, snapshot: Snapshot, name: bytes) -> str:
    """The tree id of src/<name> in a snapshot of the source fixture."""
    src = repo.load_tree(snapshot.tree).find(b"src")
    assert src is not None and src.subtree is not None
    node = repo.load_tree(src.subtree).find(name)
    assert node is not None and node.subtree is not None
    return node.subtree


def test_without_the_directory_cache_every_parent_tree_is_loaded(
    repo: Repository, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = backup_paths(repo, [str(source)], use_cache=False, processes=1)
    loaded = count_tree_loads(repo, monkeypatch)
    second = backup_paths(repo, [str(source)], parent=first, use_cache=False, processes=1)
    assert second.tree == first.tree
    assert second.summary["bytes_read"] == 0
    assert len(loaded) == 1 + 1 + 4 + 4  # root, src, dir0-3, their nested


def test_a_damaged_or_stale_cache_is_ignored(
    repo: Repository, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    first = backup_paths(repo, [str(source)], cache_dir=str(cache_dir), processes=1)
    location = cache_path(cache_dir, repo.config.id, first.hostname, first.paths)
    assert load_cache(location, first.id) is not None
    assert load_cache(location, "another snapshot") is None
    data = bytearray(location.read_bytes())
    data[-5] ^= 0xFF
    location.write_bytes(bytes(data))
    assert load_cache(location, first.id) is None
    (source / "dir1" / "file2").write_bytes(b"changed")
    loaded = count_tree_loads(repo, monkeypatch)
    second = backup_paths(repo, [str(source)], parent=first, cache_dir=str(cache_dir), processes=1)
    assert len(loaded) == 10  # the damaged cache was not used
    assert second.summary["files_changed"] == 1
    assert load_cache(location, second.id) is not None  # and a fresh one was written
    target = tmp_path / "restore"
    assert restore_snapshot(repo, second, str(target)).errors == []
    assert (target / "src" / "dir1" / "file2").read_bytes() == b"changed"
