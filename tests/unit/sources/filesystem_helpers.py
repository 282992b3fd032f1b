"""Helpers for the filesystem source tests: build trees, capture them, compare them.

Everything works relative to directory descriptors so that trees with paths longer
than PATH_MAX can be built and inspected, and reads use O_NOATIME so capturing a
tree does not change the access times being compared.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backvault.repo.errors import DamagedDataError
from backvault.repo.pack import pack_key
from backvault.repo.repository import Repository
from backvault.storage.local import LocalStore

PASSWORD = "correct horse battery staple"
_NOATIME = getattr(os, "O_NOATIME", 0) if os.geteuid() == 0 else 0
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _NOATIME

Entry = dict[str, Any]


def new_repository(path: str) -> Repository:
    """Create a repository on a LocalStore at path."""
    return Repository.init(LocalStore(path), PASSWORD)


def damage_blob(repo: Repository, blob_id: str, at: int | None = None) -> None:
    """Flip one byte of a stored blob in its pack file (at: offset in the blob, default the middle)."""
    location = repo.index.lookup(bytes.fromhex(blob_id))
    assert location is not None
    pack = Path(repo.store.location) / pack_key(location.pack_id)
    data = bytearray(pack.read_bytes())
    data[location.offset + (location.length // 2 if at is None else at)] ^= 0xFF
    os.chmod(pack, 0o644)  # packs are stored read-only
    pack.write_bytes(bytes(data))


def damage_tree(repo: Repository, tree_id: str) -> DamagedDataError:
    """Damage a stored tree; returns the error that reading it alone gives (what restores report)."""
    damage_blob(repo, tree_id)
    try:
        repo.load_tree(tree_id)
    except DamagedDataError as error:
        return error
    raise AssertionError("the damaged tree still loads")


@contextmanager
def opened_directory(path: str | bytes, dir_fd: int | None = None) -> Iterator[int]:
    """Open a directory (relative to dir_fd when given) and close it afterwards."""
    fd = os.open(path, _DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def write_file(dir_fd: int, name: bytes, data: bytes, mode: int = 0o644) -> None:
    """Create name below dir_fd with data."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(name, mode, dir_fd=dir_fd)


def make_deep_directory(root: str, name: bytes, depth: int) -> list[bytes]:
    """Create depth nested directories called name below root; return the components."""
    parts = []
    fd = os.open(root, _DIR)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            parts.append(name)
        write_file(fd, b"deep.txt", b"at the bottom\n")
        os.symlink(b"deep.txt", b"deep-link", dir_fd=fd)
    finally:
        os.close(fd)
    return parts


def _file_digest(dir_fd: int, name: bytes) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | _NOATIME, dir_fd=dir_fd)
    digest = hashlib.sha256()
    try:
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def capture(root: str, *, atime: bool = False) -> tuple[dict[bytes, Entry], set[frozenset[bytes]]]:
    """Return every entry below root with its metadata, and the groups of hard-linked paths."""
    entries: dict[bytes, Entry] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    with opened_directory(root) as fd:
        _capture(fd, b"", entries, inodes, atime)
    groups = {frozenset(paths) for paths in inodes.values() if len(paths) > 1}
    return entries, groups


def _capture(
    fd: int,
    prefix: bytes,
    entries: dict[bytes, Entry],
    inodes: dict[tuple[int, int], set[bytes]],
    atime: bool,
) -> None:
    for name in sorted(os.fsencode(item) for item in os.listdir(fd)):
        path = prefix + b"/" + name
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        kind = stat.S_IFMT(st.st_mode)
        entry: Entry = {
            "type": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
        }
        if atime and kind != stat.S_IFLNK:  # readlink moves a symlink's atime
            entry["atime_ns"] = st.st_atime_ns
        if kind == stat.S_IFREG:
            entry["size"] = st.st_size
            entry["sha256"] = _file_digest(fd, name)
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(path)
        elif kind == stat.S_IFLNK:
            entry["target"] = os.readlink(name, dir_fd=fd)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            entry["rdev"] = st.st_rdev
        entries[path] = entry
        if kind == stat.S_IFDIR:
            with opened_directory(name, fd) as child:
                _capture(child, path, entries, inodes, atime)


def assert_same_tree(source: str, restored: str, *, atime: bool = False) -> None:
    """Assert restored holds exactly what source holds: content, metadata and hard links.

    Access times are compared only with atime=True: backups record them only when asked to.
    """
    expected, expected_links = capture(source, atime=atime)
    actual, actual_links = capture(restored, atime=atime)
    assert sorted(actual) == sorted(expected)
    for path, entry in expected.items():
        assert actual[path] == entry, path
    assert actual_links == expected_links
