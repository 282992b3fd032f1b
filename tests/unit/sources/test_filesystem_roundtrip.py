"""Back up a tree full of edge cases into a real repository and restore it identically."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from filesystem_helpers import (
    assert_same_tree,
    make_deep_directory,
    opened_directory,
    write_file,
)

from backvault.repo.repository import Repository
from backvault.sources.filesystem.backup import BackupError, ProgressInfo, backup_paths
from backvault.sources.filesystem.listing import PathNotFoundError, walk_snapshot
from backvault.sources.filesystem.restore import RestoreProgress, data_ranges, restore_snapshot

AS_ROOT = os.geteuid() == 0
GIB = 1 << 30
LONG_NAME = b"n" * 200


def build_edge_cases(root: Path) -> None:
    """Create every kind of entry the filesystem source must handle."""
    root.mkdir()
    with opened_directory(str(root)) as fd:
        write_file(fd, b"regular.txt", b"hello\n")
        write_file(fd, b"empty", b"")
        write_file(fd, b"big.bin", os.urandom(20 << 20))
        write_file(fd, b"caf\xe9-latin1.txt", b"not utf-8 name\n")
        write_file(fd, b"line\nbreak", b"newline in the name\n")
        write_file(fd, b"setuid", b"#!/bin/sh\n", mode=0o4755)
        write_file(fd, b"setgid", b"#!/bin/sh\n", mode=0o2750)
        write_file(fd, b"private", b"secret\n", mode=0o600)
        os.mkdir(b"\xff\xfe dir", dir_fd=fd)
        with opened_directory(b"\xff\xfe dir", fd) as odd:
            write_file(odd, b"inside", b"x" * 1000)
        os.symlink(b"regular.txt", b"link", dir_fd=fd)
        os.symlink(b"does/not/exist", b"dangling", dir_fd=fd)
        os.symlink(b"/etc/passwd", b"absolute-link", dir_fd=fd)
        os.symlink(b"\xe9\n", b"odd-target", dir_fd=fd)
        os.mkfifo(b"fifo", 0o640, dir_fd=fd)
    # A sparse file: 1 GiB apparent size, a few real blocks.
    with open(root / "sparse.img", "wb") as sparse:
        sparse.write(b"head")
        sparse.seek(GIB // 2)
        sparse.write(b"middle")
        sparse.truncate(GIB)
    (root / "sub").mkdir()
    os.link(root / "regular.txt", root / "sub" / "hard-link")
    os.link(root / "big.bin", root / "big-again")
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "readonly").mkdir()
    (root / "readonly" / "file").write_bytes(b"in a read-only directory")
    os.chmod(root / "readonly", 0o555)
    make_deep_directory(str(root / "sub"), LONG_NAME, 25)  # > 5000 bytes of path
    if AS_ROOT:
        os.mknod(root / "null-device", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "socket", 0o755 | stat.S_IFSOCK)
        owned = root / "owned"
        owned.write_bytes(b"owned by 1234")
        os.chown(owned, 1234, 1234)
        os.chmod(owned, 0o4711)  # after chown, which clears setuid
        (root / "owned-dir").mkdir()
        os.chown(root / "owned-dir", 1234, 4321)
        os.lchown(root / "link", 1234, 1234)
    # Nanosecond times, set last on files and bottom-up on directories.
    os.utime(root / "regular.txt", ns=(1_000_000_001, 1_600_000_000_123_456_789))
    os.utime(root / "link", ns=(5, 1_500_000_000_987_654_321), follow_symlinks=False)
    os.utime(root / "sub", ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_002))
    os.utime(root, ns=(1_650_000_000_000_000_003, 1_650_000_000_000_000_004))


def test_round_trip_of_every_edge_case(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    build_edge_cases(source)
    snapshot = backup_paths(repo, [str(source)], tags=["edge"], with_atime=True)
    assert snapshot.errors == []
    assert not snapshot.partial
    assert snapshot.paths == [str(source)]
    assert snapshot.tags == ["edge"]
    assert snapshot.source == {"type": "filesystem"}
    assert snapshot.time.utcoffset() == timedelta(0)
    # big.bin and big-again share an inode: read once.
    assert snapshot.summary["bytes_read"] < (20 << 20) + GIB + (1 << 20)
    assert snapshot.summary["files_new"] >= 10

    reopened = Repository.open(repo.store, "correct horse battery staple")
    target = tmp_path / "restore"
    result = restore_snapshot(reopened, reopened.find_snapshot("latest"), str(target))
    assert result.errors == []
    assert_same_tree(str(source), str(target / "src"), atime=True)

    sparse = os.stat(target / "src" / "sparse.img")
    assert sparse.st_size == GIB
    assert sparse.st_blocks * 512 < (1 << 20)  # holes stayed holes
    assert os.stat(target / "src" / "big.bin").st_ino == os.stat(target / "src" / "big-again").st_ino
    # Less than everything: the zero chunks of the sparse file were skipped.
    assert result.bytes_written < (20 << 20) + (1 << 20)


def test_listing_shows_every_entry_with_reversible_names(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").mkdir()
    (source / "a" / "one.txt").write_bytes(b"1")
    os.symlink("one.txt", source / "a" / "to-one")
    (source / os.fsdecode(b"\xe9t\xe9")).write_bytes(b"latin-1 name")
    snapshot = backup_paths(repo, [str(source)])
    listed = dict(walk_snapshot(repo, snapshot))
    assert sorted(listed) == [
        "/src",
        "/src/a",
        "/src/a/one.txt",
        "/src/a/to-one",
        "/src/" + os.fsdecode(b"\xe9t\xe9"),
    ]
    assert os.fsencode("/src/" + os.fsdecode(b"\xe9t\xe9")).endswith(b"\xe9t\xe9")
    assert listed["/src/a/to-one"].link_target == b"one.txt"
    below = [path for path, _ in walk_snapshot(repo, snapshot, "src/a")]
    assert below == ["/src/a", "/src/a/one.txt", "/src/a/to-one"]
    assert [path for path, _ in walk_snapshot(repo, snapshot, "/src/a/one.txt")] == ["/src/a/one.txt"]
    with pytest.raises(PathNotFoundError):
        list(walk_snapshot(repo, snapshot, "/src/missing"))
    with pytest.raises(PathNotFoundError):
        list(walk_snapshot(repo, snapshot, "/src/a/one.txt/below-a-file"))


def test_includes_restore_only_the_given_paths_with_their_parents(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    (source / "docs" / "sub").mkdir(parents=True)
    (source / "docs" / "a.txt").write_bytes(b"a")
    (source / "docs" / "b.txt").write_bytes(b"b")
    (source / "docs" / "sub" / "c.txt").write_bytes(b"c")
    (source / "other").mkdir()
    (source / "other" / "d.txt").write_bytes(b"d")
    os.chmod(source / "docs", 0o750)
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    result = restore_snapshot(
        repo, snapshot, str(target), includes=["/src/docs/a.txt", "src/docs/sub", "/src/nope"]
    )
    assert result.errors == [("/src/nope", "not found in the snapshot")]
    restored = sorted(str(path.relative_to(target)) for path in target.rglob("*"))
    assert restored == ["src", "src/docs", "src/docs/a.txt", "src/docs/sub", "src/docs/sub/c.txt"]
    assert stat.S_IMODE(os.stat(target / "src" / "docs").st_mode) == 0o750
    assert result.files_restored == 2


def test_several_paths_get_one_root_node_each(tmp_path: Path, repo: Repository) -> None:
    first = tmp_path / "one" / "data"
    second = tmp_path / "two" / "data"
    for index, directory in enumerate((first, second)):
        directory.mkdir(parents=True)
        (directory / "file").write_bytes(b"%d" % index)
    single = tmp_path / "single.txt"
    single.write_bytes(b"a single file")
    snapshot = backup_paths(repo, [str(first), str(second), str(single), str(first)])
    assert snapshot.paths == [str(first), str(second), str(single)]
    assert [node.name for node in repo.load_tree(snapshot.tree).nodes] == [b"data", b"data-1", b"single.txt"]
    target = tmp_path / "restore"
    assert restore_snapshot(repo, snapshot, str(target)).errors == []
    assert (target / "data" / "file").read_bytes() == b"0"
    assert (target / "data-1" / "file").read_bytes() == b"1"
    assert (target / "single.txt").read_bytes() == b"a single file"


def test_a_missing_path_stops_the_backup_before_anything_is_written(tmp_path: Path, repo: Repository) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup_paths(repo, [str(tmp_path / "missing")])
    assert repo.list_snapshots() == []


def test_restore_over_existing_entries_replaces_them(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(b"new content")
    os.symlink("file", source / "link")
    snapshot = backup_paths(repo, [str(source)])
    target = tmp_path / "restore"
    (target / "src").mkdir(parents=True)
    (target / "src" / "file").write_bytes(b"old content that is longer")
    (target / "src" / "link").write_bytes(b"a file where the link goes")
    assert restore_snapshot(repo, snapshot, str(target)).errors == []
    assert_same_tree(str(source), str(target / "src"), atime=False)


@pytest.mark.skipif(not AS_ROOT, reason="mounting needs root")
def test_one_file_system_keeps_mount_points_empty(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    mount_point = source / "mounted"
    mount_point.mkdir(parents=True)
    (source / "kept").write_bytes(b"same filesystem")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount_point / "other-fs").write_bytes(b"another filesystem")
        confined = backup_paths(repo, [str(source)], one_file_system=True)
        everything = backup_paths(repo, [str(source)])
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert [path for path, _ in walk_snapshot(repo, confined)] == ["/src", "/src/kept", "/src/mounted"]
    assert "/src/mounted/other-fs" in dict(walk_snapshot(repo, everything))


def test_progress_callbacks_end_with_the_totals(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "one").write_bytes(b"1" * 100)
    (source / "sub" / "two").write_bytes(b"2" * 200)
    backup_progress: list[ProgressInfo] = []
    snapshot = backup_paths(repo, [str(source)], progress=backup_progress.append)
    assert backup_progress[-1].files == 2
    assert backup_progress[-1].dirs == 2
    assert backup_progress[-1].bytes_read == 300
    restore_progress: list[RestoreProgress] = []
    restore_snapshot(repo, snapshot, str(tmp_path / "restore"), progress=restore_progress.append)
    final = restore_progress[-1]
    assert (final.files, final.files_total, final.bytes_written, final.bytes_total) == (2, 2, 300, 300)


@pytest.mark.parametrize(
    ("data", "offset", "expected"),
    [
        (b"abc", 0, [(0, 3)]),
        (bytes(8192), 0, []),
        (b"x" + bytes(8191), 0, [(0, 4096)]),
        (bytes(4096) + b"y" * 10, 0, [(4096, 4106)]),
        # Blocks follow the file offset: at offset 4000 the first block is 96 bytes long.
        (b"z" + bytes(8191) + b"w", 4000, [(0, 96), (4192, 8193)]),
        (b"a" * 5000 + bytes(10000) + b"b", 0, [(0, 8192), (12288, 15001)]),
    ],
)
def test_zero_blocks_inside_chunks_are_not_written(
    data: bytes, offset: int, expected: list[tuple[int, int]]
) -> None:
    assert data_ranges(data, offset) == expected


def test_restore_never_writes_through_a_symlink_in_the_target(tmp_path: Path, repo: Repository) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_bytes(b"belongs in the target")
    snapshot = backup_paths(repo, [str(source)])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "restore"
    (target / "src").mkdir(parents=True)
    os.symlink(outside, target / "src" / "sub")  # a trap where a directory is restored
    assert restore_snapshot(repo, snapshot, str(target)).errors == []
    assert os.listdir(outside) == []
    assert not (target / "src" / "sub").is_symlink()
    assert (target / "src" / "sub" / "file").read_bytes() == b"belongs in the target"
