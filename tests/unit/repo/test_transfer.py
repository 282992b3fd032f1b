"""copy_snapshot: byte-identical copies, re-encrypted, sending only what the destination lacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backvault.repo.check import check
from backvault.repo.errors import DamagedDataError, WrongPasswordError
from backvault.repo.index import ChunkIndex
from backvault.repo.maintenance import forget_snapshots
from backvault.repo.pack import pack_key
from backvault.repo.prune import prune
from backvault.repo.repository import Repository
from backvault.repo.transfer import TransferStats, copy_snapshot, find_snapshots_tagged
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.storage.local import LocalStore

PACK_SIZE = 256 * 1024


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKVAULT_TEST_FAST_KDF", "1")


def make_repository(path: Path, password: str) -> Repository:
    return Repository.init(LocalStore(path), password, pack_size=PACK_SIZE)


def make_source_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "text.txt").write_bytes(b"hello world\n" * 50_000)
    (root / "sub" / "small").write_bytes(b"tiny")
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / "sub" / "same-as-big.bin").write_bytes((root / "big.bin").read_bytes())
    os.symlink("big.bin", root / "link")


def read_files(root: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def object_count(repository: Repository, prefix: str) -> int:
    return sum(1 for _ in repository.store.list(prefix))


def test_copy_restores_byte_identically_under_the_destination_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_source_tree(data)
    source = make_repository(tmp_path / "source", "source-pass")
    destination = make_repository(tmp_path / "destination", "destination-pass")
    snapshot = backup_paths(source, [str(data)], tags=["nightly"], use_cache=False)

    stats = TransferStats()
    copied = copy_snapshot(source, snapshot, destination, stats=stats)

    assert copied.id and copied.id in {s.id for s in destination.list_snapshots()}
    assert copied.tags == ["nightly"] and copied.time == snapshot.time
    assert copied.source["copied_from"] == {"repository": source.config.id, "snapshot": snapshot.id}
    # ids are keyed per repository: nothing of the source's ids may show up in the destination
    assert copied.tree != snapshot.tree
    assert stats.chunks_new > 0
    # the duplicate file's chunks are read and sent once
    assert 3 << 20 <= stats.bytes_read < 6 << 20
    assert stats.bytes_new < 6 << 20

    reopened = Repository.open(LocalStore(tmp_path / "destination"), "destination-pass")
    target = tmp_path / "restored"
    result = restore_snapshot(reopened, reopened.find_snapshot(copied.id), str(target))
    assert not result.errors
    restored_root = target / data.name
    assert read_files(restored_root) == read_files(data)
    assert os.readlink(restored_root / "link") == "big.bin"
    report = check(reopened, read_data_fraction=1.0)
    assert report.ok, report.problems
    # the source password does not open the destination: it has its own key
    with pytest.raises(WrongPasswordError):
        Repository.open(LocalStore(tmp_path / "destination"), "source-pass")


def test_a_second_copy_of_a_similar_snapshot_uploads_only_new_chunks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_source_tree(data)
    source = make_repository(tmp_path / "source", "pw")
    destination = make_repository(tmp_path / "destination", "pw2")
    first = backup_paths(source, [str(data)], use_cache=False)
    copy_snapshot(source, first, destination)
    packs_after_first = object_count(destination, "data/")
    stored_after_first = sum(info.size for info in destination.store.list("data/"))

    (data / "added.bin").write_bytes(os.urandom(700 * 1024))
    second = backup_paths(source, [str(data)], parent=first, use_cache=False)
    stats = TransferStats()
    copied = copy_snapshot(source, second, destination, stats=stats)

    # the unchanged data is read from the source but not sent again
    assert stats.bytes_read > 3 << 20
    assert stats.bytes_new <= 700 * 1024 + 64 * 1024  # the new file, plus rewritten trees
    assert stats.chunks_reused > 0
    stored_growth = sum(info.size for info in destination.store.list("data/")) - stored_after_first
    assert stored_growth < 800 * 1024
    assert object_count(destination, "data/") - packs_after_first <= 4
    target = tmp_path / "restored"
    restore_snapshot(destination, copied, str(target))
    assert read_files(target / data.name) == read_files(data)
    assert check(destination, read_data_fraction=1.0).ok


def test_copy_then_forget_and_prune_in_the_source_leaves_the_copy_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(os.urandom(1 << 20))
    source = make_repository(tmp_path / "source", "pw")
    destination = make_repository(tmp_path / "destination", "pw")
    snapshot = backup_paths(source, [str(data)], use_cache=False)
    copied = copy_snapshot(source, snapshot, destination, tags=["cold", "point=abc"])
    assert find_snapshots_tagged(destination, "point=abc") == [copied]
    assert find_snapshots_tagged(destination, "point=other") == []

    forget_snapshots(source, [snapshot])
    prune(source, grace_seconds=0)
    assert object_count(source, "data/") == 0
    target = tmp_path / "restored"
    restore_snapshot(destination, copied, str(target))
    assert (target / "data" / "file").read_bytes() == (data / "file").read_bytes()


def test_damaged_source_data_fails_the_copy_without_a_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(os.urandom(2 << 20))
    source = make_repository(tmp_path / "source", "pw")
    destination = make_repository(tmp_path / "destination", "pw")
    snapshot = backup_paths(source, [str(data)], use_cache=False)
    index: ChunkIndex = source.index
    # flip a byte inside the pack holding the first chunk of the file
    node = source.load_tree(source.load_tree(snapshot.tree).nodes[0].subtree or "").nodes[0]
    location = index.lookup(bytes.fromhex(node.content[0]))
    assert location is not None
    path = tmp_path / "source" / pack_key(location.pack_id)
    raw = bytearray(path.read_bytes())
    raw[location.offset + 40] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(raw))

    with pytest.raises(DamagedDataError):
        copy_snapshot(source, snapshot, destination)
    assert destination.list_snapshots() == []
    assert check(destination).ok  # what was uploaded is only unreferenced packs


def test_copy_into_the_same_repository_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"x")
    source = make_repository(tmp_path / "source", "pw")
    snapshot = backup_paths(source, [str(data)], use_cache=False)
    with pytest.raises(ValueError, match="same repository"):
        copy_snapshot(source, snapshot, Repository.open(source.store, "pw"))


class Stop(Exception):
    pass


def test_heartbeat_reports_progress_and_can_stop_the_copy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "one").write_bytes(os.urandom(1 << 20))
    (data / "two").write_bytes(os.urandom(1 << 20))
    source = make_repository(tmp_path / "source", "pw")
    destination = make_repository(tmp_path / "destination", "pw")
    snapshot = backup_paths(source, [str(data)], use_cache=False)

    seen: list[int] = []
    stats = TransferStats()
    copy_snapshot(source, snapshot, destination, heartbeat=seen.append, stats=stats)
    assert seen and seen[-1] == stats.bytes_read == 2 << 20

    stopped_in = make_repository(tmp_path / "stopped", "pw")

    calls: list[int] = []

    def stop(count: int) -> None:
        calls.append(count)
        if count > 0:  # stop once data has been read: at the latest just before the snapshot
            raise Stop

    with pytest.raises(Stop):
        copy_snapshot(source, snapshot, stopped_in, heartbeat=stop)
    assert calls[0] == 0 and calls[-1] > 0
    assert stopped_in.list_snapshots() == []
    assert list(stopped_in.store.list("data/"))  # what was sent stays reusable by the next copy
    assert check(stopped_in).ok
    assert not list(stopped_in.store.list("locks/"))  # both locks were released
    assert not list(source.store.list("locks/"))
