"""Stream snapshots: named streams round-trip byte for byte and list like any snapshot."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from backvault.repo.repository import Repository
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.sources.streams import StreamSnapshot, find_file, iter_files, open_content
from backvault.storage.local import LocalStore


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    store = LocalStore(str(tmp_path / "repo"))
    Repository.init(store, "pw")
    return Repository.open(store, "pw")


def test_streams_round_trip_and_restore_as_files(repository: Repository, tmp_path: Path) -> None:
    big = os.urandom(40 * 1024 * 1024)
    beats: list[int] = []
    with StreamSnapshot(repository, heartbeat=beats.append) as builder:
        builder.add_stream("dump.sql", io.BytesIO(big))
        builder.add_bytes("meta/schema.json", b'{"tables": 2}')
        builder.add_bytes("meta/empty", b"")
        snapshot = builder.commit(paths=["db"], source={"type": "test"}, tags=["t"])
    assert beats[-1] == len(big) + 13
    assert not snapshot.partial
    reopened = Repository.open(repository.store, "pw").find_snapshot("latest")
    listed = [path for path, _ in iter_files(repository, reopened)]
    assert listed == ["dump.sql", "meta/empty", "meta/schema.json"]
    with open_content(repository, find_file(repository, reopened, "dump.sql")) as stream:
        assert stream.read() == big
    restore_snapshot(repository, reopened, str(tmp_path / "out"))
    assert (tmp_path / "out" / "dump.sql").read_bytes() == big
    assert (tmp_path / "out" / "meta" / "schema.json").read_bytes() == b'{"tables": 2}'


def test_errors_mark_the_snapshot_partial_and_bad_paths_are_refused(repository: Repository) -> None:
    with StreamSnapshot(repository) as builder:
        builder.add_bytes("a/b", b"x")
        with pytest.raises(ValueError, match="added twice"):
            builder.add_bytes("a/b", b"y")
        with pytest.raises(ValueError, match="through the file"):
            builder.add_bytes("a/b/c", b"y")
        with pytest.raises(ValueError, match="invalid stream path"):
            builder.add_bytes("../x", b"y")
        builder.add_error("table/x", "permission denied")
        snapshot = builder.commit(paths=["x"], source={"type": "test"})
    assert snapshot.partial and snapshot.errors == [{"path": "table/x", "error": "permission denied"}]
    with pytest.raises(KeyError, match="no file"):
        find_file(repository, snapshot, "a/missing")
