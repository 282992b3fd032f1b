"""Restores run in worker processes give exactly what the in-process restore gives.

The thresholds are lowered so that these small trees use workers and many batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from filesystem_helpers import assert_same_tree, damage_blob, damage_tree, opened_directory, write_file

from backvault.repo import chunk_reader
from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.chunk_reader import PackReads, read_located
from backvault.repo.index import Location
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node
from backvault.sources.filesystem import restore_workers
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import RestoreProgress, restore_snapshot
from backvault.sources.filesystem.restore_write import Batch, FileJob
from backvault.storage.direct_io import AlignedBuffer
from backvault.storage.local import LocalStore


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Start workers at once and cut batches of three files; the list collects worker pids."""
    monkeypatch.setattr(restore_workers, "PARALLEL_FILES", 1)
    monkeypatch.setattr(restore_workers, "BATCH_FILES", 3)
    started: list[int] = []
    original = restore_workers._Worker.__init__

    def spy(self: restore_workers._Worker, setup: dict[str, object]) -> None:
        original(self, setup)
        started.append(self.process.pid)

    monkeypatch.setattr(restore_workers._Worker, "__init__", spy)
    return started


def build_tree(root: Path) -> None:
    """Directories of small files, shared content, hard links across batches, a big file, a sparse one."""
    root.mkdir()
    shared = os.urandom(3000)
    with opened_directory(str(root)) as fd:
        for number in range(4):
            name = b"dir%d" % number
            os.mkdir(name, 0o750, dir_fd=fd)
            with opened_directory(name, fd) as directory:
                for index in range(7):
                    write_file(directory, b"f%d" % index, os.urandom(100 + index * 997), mode=0o640)
                write_file(directory, b"same", shared)
                write_file(directory, b"empty", b"")
        write_file(fd, b"big.bin", os.urandom(3 << 20))
    os.link(root / "dir0" / "f1", root / "dir3" / "link-to-f1")  # planned batches after its primary
    with open(root / "sparse", "wb") as sparse:
        sparse.write(b"start")
        sparse.truncate(8 << 20)
    os.utime(root / "dir2", ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_002))


def test_workers_restore_the_same_tree_as_the_source(
    tmp_path: Path, repo: Repository, small_batches: list[int]
) -> None:
    source = tmp_path / "src"
    build_tree(source)
    snapshot = backup_paths(repo, [str(source)])
    updates: list[RestoreProgress] = []
    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target), workers=2, progress=updates.append)
    assert result.errors == []
    assert len(small_batches) == 2 and os.getpid() not in small_batches
    assert_same_tree(str(source), str(target / "src"))
    assert (
        os.stat(target / "src" / "dir3" / "link-to-f1").st_ino
        == os.stat(target / "src" / "dir0" / "f1").st_ino
    )
    assert os.stat(target / "src" / "sparse").st_blocks * 512 < (1 << 20)
    files = sum(len(names) for _, _, names in os.walk(source))
    assert result.files_restored == files
    last = updates[-1]
    assert last.files == files and last.bytes_written == result.bytes_written
    assert (8 << 20) - 8192 < last.bytes_total - last.bytes_written < 8 << 20  # the sparse file's hole


@pytest.mark.usefixtures("small_batches")
def test_a_damaged_chunk_fails_its_files_and_their_hard_links_in_workers(
    tmp_path: Path, repo: Repository
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    damaged = os.urandom(50_000)
    for index in range(5):
        (source / f"fine{index}").write_bytes(os.urandom(1000))
    (source / "damaged").write_bytes(damaged)
    os.link(source / "damaged", source / "zz-link")
    snapshot = backup_paths(repo, [str(source)])
    node = repo.load_tree(repo.load_tree(snapshot.tree).nodes[0].subtree or "").find(b"damaged")
    assert node is not None
    damage_blob(repo, node.content[0], at=100)

    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target), workers=2)
    assert sorted(path for path, _ in result.errors) == ["/src/damaged", "/src/zz-link"]
    assert all(node.content[0] in message for _, message in result.errors)
    assert sorted(os.listdir(target / "src")) == [f"fine{index}" for index in range(5)]
    assert result.files_restored == 5


def test_a_worker_refuses_a_target_that_was_replaced(tmp_path: Path, repo: Repository) -> None:
    target = tmp_path / "target"
    target.mkdir()
    setup = {
        "store": repo.store,
        "secret": repo.master.secret,
        "compression_level": repo.config.compression_level,
        "target": str(target),
        "identity": (0, 0),  # not the directory's device and inode
    }
    worker = restore_workers._Worker(setup)
    try:
        with pytest.raises(OSError, match="was replaced during the restore"):
            worker.run(Batch())
    finally:
        worker.stop()
    assert worker.process.returncode == 0


def test_small_restores_start_no_workers(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: object, setup: object) -> None:
        raise AssertionError("a worker was started")

    monkeypatch.setattr(restore_workers._Worker, "__init__", refuse)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"content")
    snapshot = backup_paths(repo, [str(source)])
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=4)
    assert result.errors == [] and result.files_restored == 1
    assert (tmp_path / "restore" / "src" / "a").read_bytes() == b"content"


class CountingStore(LocalStore):
    """A local store that counts its ranged-read calls (one open each) and the ranges they read."""

    calls = 0
    ranges = 0

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        CountingStore.calls += 1
        CountingStore.ranges += 1
        return super().get_range(key, offset, length)

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        CountingStore.calls += 1
        CountingStore.ranges += len(ranges)
        return super().get_ranges(key, ranges)

    def get_ranges_into(
        self, key: str, ranges: Sequence[tuple[int, int]], buffer: AlignedBuffer
    ) -> list[memoryview]:
        CountingStore.calls += 1
        CountingStore.ranges += len(ranges)
        return super().get_ranges_into(key, ranges, buffer)


def _small_files_backed_up(
    tmp_path: Path, repo: Repository, contents: dict[str, bytes]
) -> tuple[list[Node], dict[str, list[Location]], dict[str, bytes]]:
    """Back up one directory of single-chunk files: its nodes, each chunk's locations and bytes."""
    source = tmp_path / "src"
    source.mkdir()
    for name, content in contents.items():
        (source / name).write_bytes(content)
    snapshot = backup_paths(repo, [str(source)])
    nodes = repo.load_tree(repo.load_tree(snapshot.tree).nodes[0].subtree or "").nodes
    wanted = {node.content[0]: repo.index.locations(bytes.fromhex(node.content[0])) for node in nodes}
    by_id = {node.content[0]: contents[node.name.decode()] for node in nodes}
    return nodes, wanted, by_id


def test_nearby_blobs_are_read_together_and_a_damaged_copy_falls_back(
    tmp_path: Path, repo: Repository
) -> None:
    contents = {f"f{index}": os.urandom(2000) for index in range(20)}
    nodes, wanted, by_id = _small_files_backed_up(tmp_path, repo, contents)
    store = CountingStore(repo.store.location)
    CountingStore.calls = CountingStore.ranges = 0
    assert dict(read_located(store, repo.codec, wanted)) == by_id
    assert (CountingStore.calls, CountingStore.ranges) == (1, 1)  # twenty small blobs of one pack: one read

    # The first location points at the wrong bytes; the second (the real one) is used.
    first_id = nodes[0].content[0]
    real = wanted[first_id][0]
    bogus = Location(
        real.pack_id, real.type, wanted[nodes[1].content[0]][0].offset, real.length, real.raw_length
    )
    answer = dict(read_located(store, repo.codec, {first_id: [bogus, real]}))
    assert answer == {first_id: by_id[first_id]}
    unreadable = dict(read_located(store, repo.codec, {first_id: [bogus]}))
    assert "failed authentication" in str(unreadable[first_id])


class SlowCodec:
    """A blob codec that lets the read ahead finish before it decodes each blob."""

    def __init__(self, codec: BlobCodec) -> None:
        self._codec = codec

    def decode(self, blob_type: BlobType, blob_id: bytes, stored: bytes | memoryview) -> bytes:
        time.sleep(0.002)
        return self._codec.decode(blob_type, blob_id, stored)


def test_blobs_read_through_reused_buffers_stay_intact(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = {f"f{index}": os.urandom(3000 + index) for index in range(30)}
    _, wanted, by_id = _small_files_backed_up(tmp_path, repo, contents)
    # One blob per read: every read overwrites what the buffer held two reads before,
    # while the blob of the read before is decoded.
    monkeypatch.setattr(chunk_reader, "MAX_REGION", 1)
    memory = PackReads()
    store = CountingStore(repo.store.location)
    CountingStore.calls = CountingStore.ranges = 0
    codec = cast(BlobCodec, SlowCodec(repo.codec))
    for _ in range(2):  # a second batch through the same buffers
        assert dict(read_located(store, codec, wanted, memory)) == by_id
    assert CountingStore.calls == 2 * len(by_id)


def test_jobs_without_chunks_are_created_empty_by_workers(
    tmp_path: Path, repo: Repository, small_batches: list[int]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for index in range(7):
        (source / f"empty{index}").write_bytes(b"")
        os.chmod(source / f"empty{index}", 0o600 + index)
    snapshot = backup_paths(repo, [str(source)])
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=2)
    assert result.errors == [] and result.files_restored == 7
    assert len(small_batches) == 2
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    assert FileJob.__dataclass_fields__["token"].default == -1


def test_workers_do_not_inherit_the_passphrase_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKVAULT_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("PATH_FOR_TEST", "kept")
    environment = restore_workers._worker_environment()
    assert "BACKVAULT_PASSWORD" not in environment and "AWS_SECRET_ACCESS_KEY" not in environment
    assert environment["PATH_FOR_TEST"] == "kept"
    assert "hunter2" not in environment.values()


@pytest.fixture
def small_jobs(small_batches: list[int], monkeypatch: pytest.MonkeyPatch) -> list[restore_workers.Walked]:
    """Hand subtrees to workers at once and have them hand back all but a few entries."""
    monkeypatch.setattr(restore_workers, "JOB_ENTRIES", 2)
    walks: list[restore_workers.Walked] = []
    original = restore_workers.BatchRunner._walked

    def spy(self: restore_workers.BatchRunner, walked: restore_workers.Walked) -> None:
        walks.append(walked)
        original(self, walked)

    monkeypatch.setattr(restore_workers.BatchRunner, "_walked", spy)
    return walks


def build_subtrees(root: Path) -> None:
    """Nested directories with hard links across subtrees, a read-only directory, links, a FIFO."""
    for top in ("a", "b", "c"):
        for middle in range(3):
            for leaf in range(2):
                directory = root / top / f"m{middle}" / f"l{leaf}"
                directory.mkdir(parents=True)
                for index in range(2):
                    (directory / f"f{index}").write_bytes(os.urandom(200 + 300 * index))
                os.utime(directory, ns=(1_600_000_000_000_000_000 + leaf, 1_600_000_000_000_000_000 + leaf))
    (root / "a" / "first").write_bytes(os.urandom(4000))
    os.link(root / "a" / "first", root / "b" / "m2" / "l1" / "second")  # another subtree
    os.link(root / "a" / "first", root / "c" / "m0" / "third")
    os.link(root / "c" / "m1" / "l0" / "f1", root / "top-level-link")  # planned by the planner
    os.symlink("../a/first", root / "b" / "m0" / "symlink")
    os.mkfifo(root / "c" / "m2" / "fifo")
    (root / "empty").mkdir()
    os.chmod(root / "c" / "m1", 0o555)  # must stay writable until the files below are restored
    os.utime(root / "a", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def test_subtrees_handed_to_workers_restore_exactly(
    tmp_path: Path, repo: Repository, small_jobs: list[restore_workers.Walked]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "z-first-batch").mkdir()  # the planner starts the workers after these
    for index in range(3):
        (source / "z-first-batch" / f"f{index}").write_bytes(b"x" * index)
    build_subtrees(source)
    try:
        snapshot = backup_paths(repo, [str(source)])
        target = tmp_path / "restore"
        updates: list[RestoreProgress] = []
        result = restore_snapshot(repo, snapshot, str(target), workers=2, progress=updates.append)
        assert result.errors == []
        assert_same_tree(str(source), str(target / "src"))
    finally:
        os.chmod(source / "c" / "m1", 0o755)
        if (tmp_path / "restore" / "src" / "c" / "m1").exists():
            os.chmod(tmp_path / "restore" / "src" / "c" / "m1", 0o755)
    files = sum(len(names) for _, _, names in os.walk(source)) - 2  # not the symlink and FIFO
    directories = sum(len(names) for _, names, _ in os.walk(source)) + 1
    assert any(walked.deferred for walked in small_jobs)  # workers handed directories back
    assert any(walked.linked for walked in small_jobs)
    late = sum(len(walked.directories) for walked in small_jobs)
    assert 0 < late < directories  # workers applied the metadata of the directories they finished
    assert (result.files_restored, result.dirs_restored, result.others_restored) == (files, directories, 2)
    assert updates[-1].files == files


def _backed_up_subtrees(tmp_path: Path, repo: Repository) -> tuple[Path, Snapshot]:
    """build_subtrees in tmp_path/src (the read-only directory made writable again), backed up."""
    source = tmp_path / "src"
    source.mkdir()
    build_subtrees(source)
    os.chmod(source / "c" / "m1", 0o755)
    return source, backup_paths(repo, [str(source)])


def test_a_partial_restore_hands_off_only_whole_subtrees(
    tmp_path: Path, repo: Repository, small_jobs: list[restore_workers.Walked]
) -> None:
    source, snapshot = _backed_up_subtrees(tmp_path, repo)
    target = tmp_path / "restore"
    includes = ["src/a", "src/b/m2/l1", "src/c/m0/third", "src/c/m1/l0/f0"]
    result = restore_snapshot(repo, snapshot, str(target), includes=includes, workers=2)
    assert result.errors == []
    restored = {
        os.path.relpath(os.path.join(directory, name), target)
        for directory, _, names in os.walk(target)
        for name in names
    }
    wanted = {
        os.path.relpath(os.path.join(directory, name), tmp_path)
        for directory, _, names in os.walk(source / "a")
        for name in names
    }
    wanted |= {"src/b/m2/l1/f0", "src/b/m2/l1/f1", "src/b/m2/l1/second", "src/c/m0/third", "src/c/m1/l0/f0"}
    assert restored == wanted
    third, first = target / "src" / "c" / "m0" / "third", target / "src" / "a" / "first"
    assert os.stat(third).st_ino == os.stat(first).st_ino  # linked across a handed-off subtree
    assert_same_tree(str(source / "a"), str(target / "src" / "a"))
    assert small_jobs  # the whole subtrees went to workers


def test_a_damaged_tree_in_a_handed_off_subtree_is_reported_as_in_process(
    tmp_path: Path, repo: Repository, small_jobs: list[restore_workers.Walked]
) -> None:
    _, snapshot = _backed_up_subtrees(tmp_path, repo)
    src = repo.load_tree(repo.load_tree(snapshot.tree).nodes[0].subtree or "")
    b_node = src.find(b"b")
    assert b_node is not None and b_node.subtree is not None
    damaged = repo.load_tree(b_node.subtree).find(b"m1")
    assert damaged is not None and damaged.subtree is not None
    alone = damage_tree(repo, damaged.subtree)

    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=2)
    assert result.errors == [("/src/b/m1", f"cannot read the directory listing: {alone}")]
    assert os.listdir(tmp_path / "restore" / "src" / "b" / "m1") == []
    assert (tmp_path / "restore" / "src" / "b" / "m0" / "symlink").is_symlink()
