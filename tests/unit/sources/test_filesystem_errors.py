"""Unreadable, vanished and damaged items are named, never silently dropped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from filesystem_helpers import PASSWORD, new_repository

from backvault.repo.pack import pack_key
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node, Tree
from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem import reading
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.listing import walk_snapshot
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.storage.local import LocalStore

NOBODY = 65534


def make_source(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "keep.txt").write_bytes(b"kept")
    (root / "gone.txt").write_bytes(b"about to vanish")
    (root / "sub" / "also-kept").write_bytes(b"kept too")
    return root


def test_a_file_vanishing_before_lstat_is_reported(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "src")
    original = reading.list_directory

    def listing_then_delete(fd: int) -> list[bytes]:
        names = original(fd)
        if b"gone.txt" in names:
            os.unlink(b"gone.txt", dir_fd=fd)
        return names

    monkeypatch.setattr(reading, "list_directory", listing_then_delete)
    snapshot = backup_paths(repo, [str(source)])
    assert snapshot.partial
    assert snapshot.errors == [
        {"path": str(source / "gone.txt"), "error": "vanished during backup (no such file or directory)"}
    ]
    assert snapshot.summary["errors"] == 1
    assert [path for path, _ in walk_snapshot(repo, snapshot)] == [
        "/src",
        "/src/keep.txt",
        "/src/sub",
        "/src/sub/also-kept",
    ]


def test_a_file_vanishing_before_it_is_opened_is_reported(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "src")
    original: Callable[[BackupWriter, int | None, bytes], reading.FileContent] = reading.save_file_content

    def delete_then_read(writer: BackupWriter, dir_fd: int | None, name: bytes) -> reading.FileContent:
        if name == b"gone.txt":
            os.unlink(name, dir_fd=dir_fd)
        return original(writer, dir_fd, name)

    monkeypatch.setattr(reading, "save_file_content", delete_then_read)
    snapshot = backup_paths(repo, [str(source)])
    assert snapshot.partial
    assert [error["path"] for error in snapshot.errors] == [str(source / "gone.txt")]
    assert "vanished" in snapshot.errors[0]["error"]
    # The partial flag and the errors survive in the stored snapshot.
    stored = Repository.open(LocalStore(repo.store.location), PASSWORD).find_snapshot(snapshot.id)
    assert stored.partial and stored.errors == snapshot.errors


@pytest.fixture
def shared_directory() -> Iterator[Path]:
    """A directory outside pytest's private tmp tree, so that another user can reach it."""
    path = Path(tempfile.mkdtemp(prefix="backvault-fs-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# Everything is imported and the repository opened before dropping root: the interpreter's
# own files may live where nobody cannot read them.
_AS_NOBODY = """
import json, os, sys
from backvault.repo.repository import Repository
from backvault.sources.filesystem.backup import backup_paths
from backvault.storage.local import LocalStore
repo = Repository.open(LocalStore(sys.argv[1]), sys.argv[2])
os.setgroups([])
os.setgid({uid})
os.setuid({uid})
snapshot = backup_paths(repo, [sys.argv[3]])
print(json.dumps({{"id": snapshot.id, "partial": snapshot.partial, "errors": snapshot.errors}}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_permission_denied_items_are_named_and_the_snapshot_is_partial(shared_directory: Path) -> None:
    repo_path = shared_directory / "repo"
    new_repository(str(repo_path))
    source = make_source(shared_directory / "src")
    (source / "secret.txt").write_bytes(b"root only")
    os.chmod(source / "secret.txt", 0o600)
    (source / "private").mkdir(mode=0o700)
    (source / "private" / "hidden").write_bytes(b"root only")
    for directory, _, files in os.walk(repo_path):
        os.chown(directory, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(directory, name), NOBODY, NOBODY)
    completed = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY.format(uid=NOBODY), str(repo_path), PASSWORD, str(source)],
        capture_output=True,
        check=False,
        cwd="/",
    )
    assert completed.returncode == 0, completed.stderr.decode()
    report = json.loads(completed.stdout)
    assert report["partial"] is True
    assert sorted(error["path"] for error in report["errors"]) == [
        str(source / "private"),
        str(source / "secret.txt"),
    ]
    assert all(error["error"] == "Permission denied" for error in report["errors"])
    repo = Repository.open(LocalStore(repo_path), PASSWORD)
    snapshot = repo.find_snapshot(report["id"])
    assert snapshot.partial
    listed = [path for path, _ in walk_snapshot(repo, snapshot)]
    assert listed == ["/src", "/src/gone.txt", "/src/keep.txt", "/src/sub", "/src/sub/also-kept"]


def corrupt_chunk(repo: Repository, chunk_id: str) -> str:
    """Flip one byte inside the stored chunk; return the pack's key."""
    location = repo.index.lookup(bytes.fromhex(chunk_id))
    assert location is not None
    key = pack_key(location.pack_id)
    path = Path(repo.store.location) / key
    data = bytearray(path.read_bytes())
    data[location.offset + location.length // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    return key


def test_a_damaged_chunk_names_every_file_needing_it_and_the_rest_restores(
    tmp_path: Path, repo: Repository
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    damaged_content = os.urandom(100_000)
    (source / "damaged.bin").write_bytes(damaged_content)
    (source / "copy-of-damaged.bin").write_bytes(damaged_content)
    os.link(source / "damaged.bin", source / "hard-link-to-damaged")
    (source / "fine.bin").write_bytes(os.urandom(100_000))
    (source / "empty").write_bytes(b"")
    snapshot = backup_paths(repo, [str(source)])
    node = repo.load_tree(repo.load_tree(snapshot.tree).nodes[0].subtree or "").find(b"damaged.bin")
    assert node is not None and len(node.content) == 1
    key = corrupt_chunk(repo, node.content[0])
    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target))
    paths = sorted(path for path, _ in result.errors)
    assert paths == ["/src/copy-of-damaged.bin", "/src/damaged.bin", "/src/hard-link-to-damaged"]
    assert all(key in message and node.content[0] in message for _, message in result.errors)
    assert sorted(os.listdir(target / "src")) == ["empty", "fine.bin"]
    assert (target / "src" / "fine.bin").read_bytes() == (source / "fine.bin").read_bytes()
    assert result.files_restored == 2


def test_a_tree_with_escaping_names_is_refused(tmp_path: Path, repo: Repository) -> None:
    outside = tmp_path / "outside"
    evil = [
        Node(name=b"..", type="file"),
        Node(name=b"../outside", type="file"),
        Node(name=b"a/b", type="dir"),
        Node(name=b"ok", type="file", mode=0o644),
        Node(name=b"ok", type="file", mode=0o644),
    ]
    with repo.writer() as writer:
        inner = writer.save_tree(Tree(evil))
        root = writer.save_tree(Tree([Node(name=b"top", type="dir", mode=0o755, subtree=inner)]))
        snapshot = writer.commit(Snapshot(root, ["/top"], "host", "user", datetime.now(UTC)))
    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target))
    assert sorted(path for path, _ in result.errors) == [
        "/top/b'..'",
        "/top/b'../outside'",
        "/top/b'a/b'",
        "/top/b'ok'",
    ]
    assert all("damaged tree" in message for _, message in result.errors)
    assert sorted(os.listdir(target / "top")) == ["ok"]
    assert not outside.exists()
