"""The repository API: dedup, snapshots, prune's two phases and their safety rules."""

from __future__ import annotations

import io
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backvault.repo.blob import BlobType
from backvault.repo.chunker import make_chunker
from backvault.repo.config import ChunkerParams
from backvault.repo.errors import RepositoryExistsError, SnapshotNotFoundError, WrongPasswordError
from backvault.repo.prune import prune, read_deletion_marks
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node, Tree
from backvault.repo.writer import BackupWriter
from backvault.storage.local import LocalStore


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), "pw", pack_size=256 * 1024)


def save(writer: BackupWriter, files: dict[bytes, bytes]) -> Snapshot:
    nodes = []
    for name, data in files.items():
        ids, size = writer.save_stream(io.BytesIO(data))
        nodes.append(Node(name=name, type="file", size=size, content=ids))
    tree_id = writer.save_tree(Tree(nodes))
    snapshot = Snapshot(tree=tree_id, paths=["/src"], hostname="h", username="u", time=datetime.now(UTC))
    return writer.commit(snapshot)


def read_back(repository: Repository, snapshot: Snapshot) -> dict[bytes, bytes]:
    tree = repository.load_tree(snapshot.tree)
    result = {}
    for node in tree.nodes:
        chunks = dict(repository.iter_chunks(node.content))
        parts = [chunks[chunk] for chunk in node.content]
        assert all(isinstance(part, bytes) for part in parts)
        result[node.name] = b"".join(parts)  # type: ignore[arg-type]
    return result


def test_init_refuses_a_used_location_and_open_needs_the_passphrase(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    Repository.init(store, "pw")
    with pytest.raises(RepositoryExistsError):
        Repository.init(store, "pw")
    with pytest.raises(WrongPasswordError):
        Repository.open(store, "nope")
    assert Repository.open(store, "pw").config.pack_size > 0


def test_backup_round_trip_and_dedup(repository: Repository) -> None:
    files = {b"a": os.urandom(3 << 20), b"b": b"text " * 100000, b"empty": b""}
    with repository.writer() as writer:
        first = save(writer, files)
    with repository.writer() as writer:
        save(writer, files)
        assert writer.stats.chunks_new == 0 and writer.stats.bytes_stored == 0
    reopened = Repository.open(repository.store, "pw")
    assert read_back(reopened, reopened.find_snapshot(first.id[:6])) == files


def test_find_snapshot_by_latest_prefix_and_errors(repository: Repository) -> None:
    with pytest.raises(SnapshotNotFoundError, match="no snapshots"):
        repository.find_snapshot("latest")
    with repository.writer() as writer:
        one = save(writer, {b"x": b"1"})
    with repository.writer() as writer:
        two = save(writer, {b"x": b"2"})
    assert repository.find_snapshot("latest").id in {one.id, two.id}
    assert repository.find_snapshot(two.id[:10]).id == two.id
    with pytest.raises(SnapshotNotFoundError):
        repository.find_snapshot("zzzz")


def test_prune_removes_unreferenced_data_and_keeps_the_rest(repository: Repository) -> None:
    keep = {b"keep": os.urandom(2 << 20)}
    with repository.writer() as writer:
        old = save(writer, {b"old": os.urandom(2 << 20), **keep})
    with repository.writer() as writer:
        new = save(writer, keep)
    before = sum(info.size for info in repository.store.list("data/"))
    repository.store.delete(f"snapshots/{old.id}")
    report = prune(repository, grace_seconds=0)
    after = sum(info.size for info in repository.store.list("data/"))
    assert report.packs_deleted > 0 and after < before * 0.7
    assert read_back(Repository.open(repository.store, "pw"), new) == keep
    assert read_deletion_marks(repository) == []


def test_prune_defers_while_an_older_backup_runs_and_resurrects_what_it_used(repository: Repository) -> None:
    shared = os.urandom(2 << 20)
    with repository.writer() as writer:
        old = save(writer, {b"shared": shared})
    repository.store.delete(f"snapshots/{old.id}")
    concurrent = Repository.open(repository.store, "pw")
    with concurrent.writer() as writer:
        assert len(concurrent.index) > 0  # the backup reads the index (under its lock) before the mark
        report = prune(repository, grace_seconds=0)
        assert report.packs_marked > 0 and report.marks_deferred == 1 and report.packs_deleted == 0
        # the running backup dedups against the condemned data: its index predates the mark
        snapshot = save(writer, {b"shared": shared})
        assert writer.stats.chunks_new == 0
    report = prune(repository, grace_seconds=0)
    assert report.packs_resurrected > 0 and report.packs_deleted == 0
    assert read_back(Repository.open(repository.store, "pw"), snapshot) == {b"shared": shared}


def test_writers_opened_after_a_mark_do_not_dedup_against_condemned_packs(repository: Repository) -> None:
    data = os.urandom(1 << 20)
    with repository.writer() as writer:
        old = save(writer, {b"f": data})
    repository.store.delete(f"snapshots/{old.id}")
    holder = Repository.open(repository.store, "pw").lock()  # an older lock defers the sweep
    try:
        prune(repository, grace_seconds=0)
    finally:
        holder.release()
    later = Repository.open(repository.store, "pw")
    with later.writer() as writer:
        snapshot = save(writer, {b"f": data})
        assert writer.stats.chunks_new > 0
    prune(later, grace_seconds=0)
    assert read_back(Repository.open(repository.store, "pw"), snapshot) == {b"f": data}


def test_an_early_unlock_is_used_once_and_never_hides_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backvault.repo import keys
    from backvault.repo.repository import unlock_early

    store = LocalStore(tmp_path / "repo")
    created = Repository.init(store, "pw")
    derivations: list[bytes] = []
    derive = keys._derive
    monkeypatch.setattr(keys, "_derive", lambda *args: derivations.append(args[1]) or derive(*args))

    unlock_early(store, "pw")
    opened = Repository.open(LocalStore(tmp_path / "repo"), "pw")
    assert opened.master == created.master and len(derivations) == 1  # the early derivation served

    assert Repository.open(store, "pw").master == created.master  # used once: derived again
    assert len(derivations) == 2

    unlock_early(store, "wrong")
    with pytest.raises(WrongPasswordError):
        Repository.open(store, "wrong")

    unlock_early(LocalStore(tmp_path / "elsewhere"), "pw")  # a guess that does not match
    assert Repository.open(store, "pw").master == created.master


class _ShortReads(io.RawIOBase):
    """A stream that answers each read with a few bytes less than asked (as pipes do)."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = memoryview(data)
        self._random = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(self._data), self._random.randint(1, max(1, len(buffer))))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


@pytest.mark.parametrize("size", [40_000, 64 * 1024, 300_000, 1_000_003])
def test_streams_are_cut_in_windows_exactly_as_whole_buffers_are(tmp_path: Path, size: int) -> None:
    """save_stream reads a window at a time; its chunks must be those of the whole stream."""
    params = ChunkerParams(min_size=4096, avg_size=8192, max_size=32 * 1024, seed=7)
    repository = Repository.init(LocalStore(tmp_path / "repo"), "pw", chunker=params, pack_size=64 * 1024)
    # Runs of one byte give the chunker stretches without any cut point (max_size cuts).
    rng = random.Random(size)
    data = b"".join(
        bytes([rng.randrange(256)]) * rng.randrange(1, 50_000)
        if rng.random() < 0.2
        else rng.randbytes(20_000)
        for _ in range(size // 10_000 + 1)
    )[:size]
    expected = [
        repository.codec.blob_id(BlobType.DATA, data[chunk.offset : chunk.offset + chunk.length]).hex()
        for chunk in make_chunker(params).cut_buf(data)
    ]
    with repository.writer() as writer:
        ids, stored = writer.save_stream(_ShortReads(data, seed=size))  # type: ignore[arg-type]
        snapshot = writer.commit(
            Snapshot(
                tree=writer.save_tree(Tree([Node(b"f", "file", size=stored, content=ids)])),
                paths=["/src"],
                hostname="h",
                username="u",
                time=datetime.now(UTC),
            )
        )
    assert (ids, stored) == (expected, size)
    assert read_back(repository, snapshot) == {b"f": data}
