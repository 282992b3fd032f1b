"""A restore makes only the system calls that change something, and still restores exactly.

Files are created with their final mode where nothing can take it away, chowned only when
their owner is not already right, and extended only when their data stops short of their
size; the trees of a walk are read a window of their pack at a time. The tests restore in
this process (with a given umask) and, where it matters, in worker processes (umask 0), and
compare with the source.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from filesystem_helpers import (
    PASSWORD,
    assert_same_tree,
    damage_tree,
    opened_directory,
    write_file,
)

from backvault.repo.repository import Repository
from backvault.sources.filesystem import restore_workers
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.storage.direct_io import AlignedBuffer
from backvault.storage.local import LocalStore

AS_ROOT = os.geteuid() == 0
MIB = 1 << 20


@pytest.fixture(params=["in-process", "workers"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Restore in this process, or in two workers with batches of three files."""
    if request.param == "in-process":
        return 0
    monkeypatch.setattr(restore_workers, "PARALLEL_FILES", 1)
    monkeypatch.setattr(restore_workers, "BATCH_FILES", 3)
    return 2


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set this process's umask for the test; the old one comes back afterwards."""
    old = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the metadata calls made in this process (the real calls still run)."""
    counts = {"fchown": 0, "fchmod": 0, "ftruncate": 0}
    for name in counts:
        real = getattr(os, name)

        def counted(*args: Any, _name: str = name, _real: Any = real) -> Any:
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(os, name, counted)
    return counts


def test_plain_files_need_no_chown_chmod_or_truncate(
    tmp_path: Path, repo: Repository, umask: Callable[[int], None], calls: dict[str, int]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with opened_directory(str(source)) as fd:
        for index, mode in enumerate((0o644, 0o600, 0o755, 0o640, 0o444)):
            write_file(fd, b"f%d" % index, os.urandom(1000 + index), mode=mode)
        write_file(fd, b"empty", b"")
    snapshot = backup_paths(repo, [str(source)])
    umask(0o022)
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == [] and result.files_restored == 6
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    # Without root, 0o444 is created writable and chmodded once written.
    assert calls == {"fchown": 0, "fchmod": 0 if AS_ROOT else 1, "ftruncate": 0}


def test_modes_a_chown_or_the_umask_would_change_are_set_after_the_content(
    tmp_path: Path, repo: Repository, umask: Callable[[int], None], calls: dict[str, int]
) -> None:
    modes = {b"setuid": 0o4755, b"setgid": 0o2750, b"sticky": 0o1644, b"group-w": 0o664}
    modes |= {b"read-only": 0o440, b"plain": 0o640}
    if AS_ROOT:  # only root can read them back to compare
        modes |= {b"none": 0, b"other-only": 0o007}
    source = tmp_path / "src"
    source.mkdir()
    with opened_directory(str(source)) as fd:
        for name, mode in modes.items():
            write_file(fd, name, b"content of " + name, mode=mode)
    snapshot = backup_paths(repo, [str(source)])
    umask(0o027)
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    # setuid, setgid, sticky, then group-w and other-only (the umask would take bits);
    # without root, read-only instead of other-only: it must stay writable until written.
    assert calls["fchmod"] == 5


def test_every_mode_restores_in_workers_too(
    tmp_path: Path, repo: Repository, workers: int, umask: Callable[[int], None]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with opened_directory(str(source)) as fd:
        for mode in (0o4755, 0o2750, 0o1777, 0o777, 0o664, 0o640, 0o444) + ((0o200, 0) if AS_ROOT else ()):
            write_file(fd, b"m%o" % mode, os.urandom(3000), mode=mode)
    snapshot = backup_paths(repo, [str(source)])
    umask(0o077)
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=workers)
    assert result.errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))


def test_files_whose_data_stops_short_of_their_size_keep_size_and_holes(
    tmp_path: Path, repo: Repository, workers: int, calls: dict[str, int]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "zeros").write_bytes(bytes(3 * MIB))
    (source / "trailing-hole").write_bytes(os.urandom(5000) + bytes(4 * MIB))
    (source / "partial-zero-block").write_bytes(b"x" + bytes(5000))
    (source / "leading-hole").write_bytes(bytes(4 * MIB) + os.urandom(5000))
    (source / "dense").write_bytes(os.urandom(3 * MIB))
    (source / "empty").write_bytes(b"")
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target), workers=workers)
    assert result.errors == []
    assert_same_tree(str(source), str(target / "src"))
    for name in ("zeros", "trailing-hole", "leading-hole"):
        assert os.stat(target / "src" / name).st_blocks * 512 < MIB, name  # holes stayed holes
    if not workers:
        assert calls["ftruncate"] == 3  # zeros, trailing-hole, partial-zero-block


@pytest.mark.skipif(not AS_ROOT, reason="only root restores owners")
def test_owners_are_restored_under_a_setgid_target_and_in_reused_directories(
    tmp_path: Path, repo: Repository, workers: int
) -> None:
    source = tmp_path / "src"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "kept").mkdir()
    for directory in (source, source / "sub", source / "sub" / "deeper", source / "kept"):
        for name, owner in (("ours", (0, 0)), ("theirs", (1234, 5678)), ("group", (0, 5678))):
            (directory / name).write_bytes(os.urandom(2000))
            os.chown(directory / name, *owner)
            os.chmod(directory / name, 0o640)
    os.chown(source / "sub", 1234, 5678)
    os.chmod(source / "sub" / "deeper", 0o2775)
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    (target / "src" / "kept").mkdir(parents=True)
    os.chown(target / "src" / "kept", 99, 98)  # reused: neither our owner nor the snapshot's
    os.chmod(target / "src" / "kept", 0o2770)
    os.chown(target, 0, 4321)
    os.chmod(target, 0o2755)  # new entries get group 4321, not ours
    result = restore_snapshot(repo, snapshot, str(target), workers=workers)
    assert result.errors == []
    assert_same_tree(str(source), str(target / "src"))


@pytest.mark.skipif(not AS_ROOT, reason="only root restores owners")
def test_new_entries_with_another_owner_than_predicted_turn_the_shortcuts_off(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch, calls: dict[str, int]
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    for directory in (source, source / "sub"):
        (directory / "file").write_bytes(b"owned by root")
    snapshot = backup_paths(repo, [str(source)])
    real_fstat = os.fstat

    def squashed(fd: int) -> os.stat_result:
        """What NFS with root_squash shows: directories we create belong to nobody."""
        found = real_fstat(fd)
        if not stat.S_ISDIR(found.st_mode) or found.st_ino == target_inode:
            return found
        fields = list(found[:10])
        fields[4] = 65534
        return os.stat_result(fields)

    target = tmp_path / "restore"
    target.mkdir()
    target_inode = os.stat(target).st_ino
    monkeypatch.setattr(os, "fstat", squashed)
    result = restore_snapshot(repo, snapshot, str(target), workers=0)
    assert result.errors == []
    assert calls["fchown"] == 2 and calls["fchmod"] == 2  # as before the shortcuts
    assert_same_tree(str(source), str(target / "src"))


def _acl(*entries: tuple[int, int]) -> bytes:
    """A POSIX ACL extended attribute: (tag, permissions) entries, no named users."""
    return struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries
    )


def test_a_default_acl_on_the_target_does_not_change_restored_modes(
    tmp_path: Path, repo: Repository, workers: int
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    for directory in (source, source / "sub"):
        with opened_directory(str(directory)) as fd:
            for mode in (0o644, 0o755, 0o600):
                write_file(fd, b"m%o" % mode, b"data", mode=mode)
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    target.mkdir()
    # New entries get rwx for their owner and nothing for anyone else, whatever the umask.
    try:
        os.setxattr(target, "system.posix_acl_default", _acl((0x01, 7), (0x04, 0), (0x20, 0)))
    except OSError as error:
        pytest.skip(f"no POSIX ACLs here: {error.strerror}")
    result = restore_snapshot(repo, snapshot, str(target), workers=workers)
    assert result.errors == []
    assert_same_tree(str(source), str(target / "src"), atime=False)


class CountingStore(LocalStore):
    """A local store that counts its ranged-read calls (each opens a pack once)."""

    calls = 0

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        CountingStore.calls += 1
        return super().get_range(key, offset, length)

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        CountingStore.calls += 1
        return super().get_ranges(key, ranges)

    def get_ranges_into(
        self, key: str, ranges: Sequence[tuple[int, int]], buffer: AlignedBuffer
    ) -> list[memoryview]:
        CountingStore.calls += 1
        return super().get_ranges_into(key, ranges, buffer)


def _wide_tree(source: Path) -> int:
    """Twelve directories of three subdirectories holding one file each; return the trees."""
    for outer in range(12):
        for inner in range(3):
            leaf = source / f"d{outer}" / f"e{inner}"
            leaf.mkdir(parents=True)
            (leaf / "file").write_bytes(os.urandom(500))
    return 1 + 12 + 12 * 3


def test_the_trees_of_a_walk_are_read_a_window_at_a_time(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    trees = 1 + _wide_tree(source)  # and the snapshot's root
    snapshot = backup_paths(repo, [str(source)], processes=1)  # its trees in one pack
    counted = Repository.open(CountingStore(repo.store.location), PASSWORD)
    CountingStore.calls = 0
    result = restore_snapshot(counted, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    # One window of the pack holds all 50 trees; one more read for the data.
    assert CountingStore.calls <= 3 < trees


def test_a_damaged_tree_in_a_window_is_reported_as_when_read_alone(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    _wide_tree(source)
    snapshot = backup_paths(repo, [str(source)])
    src = repo.load_tree(repo.load_tree(snapshot.tree).nodes[0].subtree or "")
    damaged = src.find(b"d3")
    assert damaged is not None and damaged.subtree is not None
    alone = damage_tree(repo, damaged.subtree)

    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == [("/src/d3", f"cannot read the directory listing: {alone}")]
    restored = tmp_path / "restore" / "src"
    assert sorted(os.listdir(restored)) == sorted(f"d{number}" for number in range(12))
    assert os.listdir(restored / "d3") == []
    assert (restored / "d4" / "e2" / "file").read_bytes() == (source / "d4" / "e2" / "file").read_bytes()


def test_reused_directories_keep_their_contents_and_get_the_snapshot_metadata(
    tmp_path: Path, repo: Repository, workers: int
) -> None:
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "file").write_bytes(b"new")
    os.chmod(source / "a", 0o750)
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    (target / "src" / "a").mkdir(parents=True)
    (target / "src" / "a" / "unrelated").write_bytes(b"left alone")
    os.chmod(target / "src" / "a", 0o2777)
    result = restore_snapshot(repo, snapshot, str(target), workers=workers)
    assert result.errors == []
    restored = target / "src" / "a"
    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o750
    assert (restored / "file").read_bytes() == b"new"
    assert (restored / "unrelated").read_bytes() == b"left alone"
