"""Property: any tree backs up and restores byte-identically with equal metadata."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from filesystem_helpers import assert_same_tree, new_repository, opened_directory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backvault.repo.repository import Repository
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot

ALPHABET = [b"a", b"b", b"Z", b"0", b"\n", b" ", b".", b"-", b"\xff", b"\xe9", b"\xc3\xa9", b"\x01"]
names = (
    st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=6)
    .map(b"".join)
    .filter(lambda name: name not in (b".", b".."))
)
times = st.integers(min_value=0, max_value=4 * 10**18)
sizes = st.one_of(st.integers(0, 5000), st.sampled_from([0, 1, 4096, 700_000, 1_300_000]))
files = st.tuples(
    st.just("file"),
    sizes,
    st.sampled_from(["random", "zeros", "text"]),
    st.integers(0, 2**32),
    st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444]),
    times,
)
symlinks = st.tuples(
    st.just("symlink"), st.lists(st.sampled_from([*ALPHABET, b"/", b".."]), min_size=1, max_size=5)
)
hard_links = st.tuples(st.just("hardlink"), st.integers(0, 1000))
entries = st.recursive(
    st.one_of(files, files, symlinks, hard_links),
    lambda children: st.tuples(
        st.just("dir"),
        st.dictionaries(names, children, max_size=5),
        st.sampled_from([0o755, 0o700, 0o1777, 0o2755, 0o555]),
        times,
    ),
    max_leaves=30,
)
trees = st.dictionaries(names, entries, max_size=8)


def _content(kind: str, size: int, seed: int) -> bytes:
    if kind == "zeros":
        return bytes(size)
    if kind == "text":
        return (b"backup restore line %d\n" % seed * (size // 20 + 1))[:size]
    return random.Random(seed).randbytes(size)


def _build(fd: int, tree: dict[bytes, Any], created: list[tuple[int, bytes]]) -> None:
    """Create tree below the directory fd; created collects (dir fd, name) of files for hard links."""
    for name, entry in tree.items():
        kind = entry[0]
        if kind == "file":
            _, size, content, seed, mode, mtime = entry
            file_fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
            try:
                os.write(file_fd, _content(content, size, seed))
                os.fchmod(file_fd, mode)
                os.utime(file_fd, ns=(mtime // 3, mtime))
            finally:
                os.close(file_fd)
            created.append((os.dup(fd), name))
        elif kind == "symlink":
            os.symlink(b"".join(entry[1]), name, dir_fd=fd)
        elif kind == "hardlink":
            if created:
                source_fd, source = created[entry[1] % len(created)]
                os.link(source, name, src_dir_fd=source_fd, dst_dir_fd=fd)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd))
        else:
            _, children, mode, mtime = entry
            os.mkdir(name, dir_fd=fd)
            with opened_directory(name, fd) as child:
                _build(child, children, created)
            os.chmod(name, mode, dir_fd=fd)
            os.utime(name, ns=(mtime // 2, mtime), dir_fd=fd)


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return new_repository(str(tmp_path_factory.mktemp("property") / "repo"))


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid bits on created files need root")
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(tree=trees)
def test_random_trees_round_trip(shared_repo: Repository, tree: dict[bytes, Any]) -> None:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "src"
        source.mkdir()
        created: list[tuple[int, bytes]] = []
        with opened_directory(str(source)) as fd:
            try:
                _build(fd, tree, created)
            finally:
                for duplicate, _ in created:
                    os.close(duplicate)
        snapshot = backup_paths(shared_repo, [str(source)])
        assert snapshot.errors == []
        target = Path(work) / "restore"
        result = restore_snapshot(shared_repo, snapshot, str(target))
        assert result.errors == []
        assert_same_tree(str(source), str(target / "src"))
        # Backing the unchanged tree up again reads nothing and gives the same tree.
        again = backup_paths(shared_repo, [str(source)], parent=snapshot)
        assert again.summary["bytes_read"] == 0
        assert again.tree == snapshot.tree


MUTATIONS = ["rewrite-keeping-mtime", "append", "delete", "chmod", "new-file", "new-directory", "touch"]


def _regular_files(root: Path) -> list[bytes]:
    found = []
    for directory, _, names in os.walk(os.fsencode(root)):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)


def _mutate(root: Path, operation: str, pick: int) -> None:
    """Change the tree the way users do; some changes leave size and mtime as they were."""
    files = _regular_files(root)
    if not files:
        return
    path = files[pick % len(files)]
    before = os.stat(path)
    if operation == "rewrite-keeping-mtime":
        data = Path(os.fsdecode(path)).read_bytes()
        with open(path, "wb") as stream:
            stream.write(bytes(255 - byte for byte in data) if data else b"")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif operation == "append":
        with open(path, "ab") as stream:
            stream.write(b"appended")
    elif operation == "delete":
        os.unlink(path)
    elif operation == "chmod":
        os.chmod(path, before.st_mode & 0o7777 ^ 0o070)
    elif operation == "touch":
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    elif operation == "new-file":
        with open(os.path.join(os.path.dirname(path), b"new-%d" % pick), "wb") as stream:
            stream.write(b"fresh %d" % pick)
    else:
        directory = os.path.join(os.path.dirname(path), b"new-directory-%d" % pick)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, b"inside"), "wb") as stream:
            stream.write(b"in a new directory")


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid bits on created files need root")
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    tree=trees,
    mutations=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1000)), min_size=1, max_size=6),
)
def test_incremental_backups_after_random_changes_restore_the_changed_tree(
    shared_repo: Repository, tree: dict[bytes, Any], mutations: list[tuple[str, int]]
) -> None:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "src"
        source.mkdir()
        created: list[tuple[int, bytes]] = []
        with opened_directory(str(source)) as fd:
            try:
                _build(fd, tree, created)
            finally:
                for duplicate, _ in created:
                    os.close(duplicate)
        first = backup_paths(shared_repo, [str(source)], with_atime=True)
        for operation, pick in mutations:
            _mutate(source, operation, pick)
        second = backup_paths(shared_repo, [str(source)], parent=first, with_atime=True)
        assert second.errors == []
        target = Path(work) / "restore"
        assert restore_snapshot(shared_repo, second, str(target)).errors == []
        assert_same_tree(str(source), str(target / "src"), atime=True)
