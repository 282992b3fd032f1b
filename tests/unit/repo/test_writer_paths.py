"""The writer's three ways of reading a file cut and store exactly the same chunks."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from backvault.repo import writer as writer_module
from backvault.repo.blob import BlobType
from backvault.repo.chunker import cut_points
from backvault.repo.repository import Repository
from backvault.storage.local import LocalStore


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), "pw", pack_size=1 << 20)


def expected_ids(repository: Repository, data: bytes) -> list[str]:
    """Chunk ids of data cut in one piece by the reference chunker."""
    ends = cut_points(repository.config.chunker, data)
    starts = [0, *ends[:-1]]
    return [
        repository.codec.blob_id(BlobType.DATA, data[a:b]).hex() for a, b in zip(starts, ends, strict=True)
    ]


def compressible(size: int) -> bytes:
    words = [b"alpha ", b"beta ", b"gamma ", b"delta\n", os.urandom(7)]
    chooser = random.Random(7)
    return b"".join(chooser.choice(words) for _ in range(size // 5))[:size]


@pytest.mark.parametrize("size", [3 << 20, (17 << 20) + 12345])  # in one buffer, and streamed
def test_files_are_cut_like_the_reference_chunker_and_read_back(
    tmp_path: Path, repository: Repository, size: int
) -> None:
    data = compressible(size)
    path = tmp_path / "file"
    path.write_bytes(data)
    with repository.writer() as writer:
        ids, read = writer.save_file(str(path))
        writer.flush()
    assert read == size
    assert ids == expected_ids(repository, data)
    assert b"".join(repository.read_blob(bytes.fromhex(chunk_id)) for chunk_id in ids) == data


def test_a_file_that_grows_while_read_whole_is_stored_with_the_new_bytes(
    tmp_path: Path, repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = compressible(2 << 20)
    path = tmp_path / "file"
    path.write_bytes(data)
    real_fstat = os.fstat

    class Shrunk:
        """fstat as it was before the file grew by 1 MiB."""

        def __init__(self, fd: int) -> None:
            self.st_size = real_fstat(fd).st_size - (1 << 20)

    with repository.writer() as writer:
        monkeypatch.setattr(writer_module.os, "fstat", Shrunk)
        ids, read = writer.save_file(str(path))
        monkeypatch.undo()
        writer.flush()
    assert read == len(data)
    assert ids == expected_ids(repository, data)


@pytest.mark.parametrize("stated", [0, 1000, 2999, 3000])
def test_a_small_file_is_read_to_its_end_whatever_size_fstat_gave(
    tmp_path: Path, repository: Repository, stated: int
) -> None:
    # The size comes from the caller's fstat; a file that grew since then must still be stored whole.
    data = os.urandom(3000)
    path = tmp_path / "grew"
    path.write_bytes(data)
    with repository.writer() as writer:
        fd = os.open(path, os.O_RDONLY)
        try:
            ids, read = writer.save_fd(fd, stated)
        finally:
            os.close(fd)
    assert read == len(data)
    assert b"".join(repository.read_blob(bytes.fromhex(chunk_id)) for chunk_id in ids) == data


def test_packs_are_stored_in_at_most_two_buffers_across_repeated_flushes(
    tmp_path: Path, repository: Repository
) -> None:
    # Flushing with nothing to store must not set a buffer aside: a writer that did waited
    # forever for a third buffer on its next full pack.
    chunks = [os.urandom(300_000) for _ in range(24)]  # incompressible: ~7 packs of 1 MiB
    stored: list[str] = []
    failures: list[BaseException] = []

    def back_up() -> None:
        try:
            with repository.writer() as writer:
                writer.flush()
                writer.flush()
                pending: list[Future[None]] = []
                for number, chunk in enumerate(chunks):
                    stored.append(writer.save_chunk(chunk, pending if number % 2 else None))
                    if number % 8 == 0:
                        writer_module._wait(pending)
                        writer.flush()
                writer_module._wait(pending)
                writer.flush()
                assert writer._buffers <= 2  # one pack filling and one being stored, never more
        except BaseException as error:
            failures.append(error)

    worker = threading.Thread(target=back_up, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the writer hung waiting for a pack buffer"
    assert not failures
    assert [repository.read_blob(bytes.fromhex(chunk_id)) for chunk_id in stored] == chunks


def test_a_pack_that_cannot_be_stored_fails_every_later_flush_without_hanging(
    repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Packs are stored on the writer's store thread: its failure must reach the backup, and
    # stay, since files saved before it have blobs in the lost pack.
    def disk_full(key: str, data: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(repository.store, "put_new", disk_full)
    chunks = [os.urandom(300_000) for _ in range(12)]
    outcome: list[str] = []

    def back_up() -> None:
        with contextlib.suppress(OSError), repository.writer() as writer:
            for chunk in chunks:
                try:
                    writer.save_chunk(chunk)
                except OSError:
                    outcome.append("save failed")
            for _ in range(2):
                try:
                    writer.flush()
                except OSError:
                    outcome.append("flush failed")

    worker = threading.Thread(target=back_up, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the writer hung after a failed store"
    assert "save failed" in outcome
    assert outcome[-2:] == ["flush failed", "flush failed"]
