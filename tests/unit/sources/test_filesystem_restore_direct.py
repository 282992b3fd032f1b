"""Big files restored around the page cache (O_DIRECT): exact bytes, holes kept, whatever order.

Chunks arrive in pack order, which need not be file order, and start and end anywhere in
a block; all-zero chunks are never handed over. Where the filesystem or device refuses
O_DIRECT, the restore goes on through the page cache, and the files are still exact.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path

import pytest
from filesystem_helpers import assert_same_tree

from backvault.repo.repository import Repository
from backvault.sources.filesystem import restore_direct, restore_workers, restore_write
from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot
from backvault.sources.filesystem.restore_direct import DirectFile
from backvault.sources.filesystem.restore_write import data_ranges, is_zero
from backvault.storage import direct_io
from backvault.storage.direct_io import ALIGNMENT, AlignedBuffer

MIB = 1 << 20


def _content(rng: random.Random, size: int) -> bytes:
    """Random bytes with two zero runs: one of whole blocks and more, one shorter than a block."""
    data = bytearray(rng.randbytes(size))
    data[100_000:400_000] = bytes(300_000)
    data[500_001:500_900] = bytes(899)
    return bytes(data)


def _chunks(rng: random.Random, data: bytes) -> list[tuple[int, bytes]]:
    """Cut data at random places (some chunks all zero), in shuffled order."""
    cuts = sorted({0, len(data), 100_000, 400_000, *(rng.randrange(len(data)) for _ in range(40))})
    chunks = [(start, data[start:end]) for start, end in itertools.pairwise(cuts)]
    rng.shuffle(chunks)
    return chunks


def _open_direct(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | direct_io.O_DIRECT, 0o600)
    except OSError as error:
        if direct_io.refused(error):
            pytest.skip("this filesystem does not take O_DIRECT")
        raise


@pytest.mark.parametrize("size", [3 * MIB + 17, 2 * MIB])
def test_chunks_in_any_order_make_the_exact_file_with_its_holes(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    data = _content(rng, size)
    path = tmp_path / "big"
    fd = _open_direct(path)
    direct = DirectFile(size)
    buffer = AlignedBuffer()
    written = end = 0
    try:
        for offset, chunk in _chunks(rng, data):
            if is_zero(chunk):
                continue  # as run_batch does
            count, last = direct.write(fd, offset, chunk, data_ranges, buffer)
            written, end = written + count, max(end, last)
        count, last = direct.finish(fd, buffer)
        written, end = written + count, max(end, last)
        if end < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert written < size - 290_000  # the zero blocks were left out
    assert os.stat(path).st_blocks * 512 <= size - 290_000  # and are holes


def test_a_refused_direct_write_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    data = _content(rng, 2 * MIB + 5)
    path = tmp_path / "big"
    fd = _open_direct(path)
    direct = DirectFile(len(data))
    buffer = AlignedBuffer()
    chunks = _chunks(rng, data)
    real_pwrite = restore_direct._pwrite_direct
    calls = 0

    def refuse_after_two(fd: int, view: memoryview, offset: int, buffer: AlignedBuffer) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        real_pwrite(fd, view, offset, buffer)

    monkeypatch.setattr(restore_direct, "_pwrite_direct", refuse_after_two)
    try:
        refused_at = None
        for number, (offset, chunk) in enumerate(chunks):
            if refused_at is None:
                try:
                    direct.write(fd, offset, chunk, data_ranges, buffer)
                    continue
                except OSError as error:
                    assert direct_io.refused(error)
                    direct.spill(fd)
                    refused_at = number
            os.pwrite(fd, chunk, offset)  # the rest (and the refused chunk) buffered
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    assert refused_at is not None
    assert path.read_bytes() == data


def test_a_refused_block_keeps_the_pieces_that_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * ALIGNMENT + 10)
    path = tmp_path / "big"
    fd = _open_direct(path)
    direct = DirectFile(len(data))
    buffer = AlignedBuffer()

    def refuse(fd: int, view: memoryview, offset: int, buffer: AlignedBuffer) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(restore_direct, "_pwrite_direct", refuse)
    try:
        assert direct.write(fd, 0, data[:100], data_ranges, buffer) == (0, 0)  # a piece, kept
        with pytest.raises(OSError):  # completes the first block, whose write is refused
            direct.write(fd, 100, data[100 : ALIGNMENT + 50], data_ranges, buffer)
        direct.spill(fd)
        os.pwrite(fd, data[100:], 100)  # the refused chunk and the rest, buffered
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def _big_tree(source: Path) -> None:
    rng = random.Random(3)
    source.mkdir()
    (source / "sparse").write_bytes(_content(rng, 5 * MIB + 123))
    (source / "aligned").write_bytes(rng.randbytes(2 * MIB))
    (source / "small").write_bytes(rng.randbytes(5000))
    with open(source / "trailing-hole", "wb") as file:
        file.write(rng.randbytes(MIB + 1))
        file.truncate(4 * MIB)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "workers"])
def test_big_files_restore_exactly(tmp_path: Path, repo: Repository, workers: int) -> None:
    source = tmp_path / "src"
    _big_tree(source)
    snapshot = backup_paths(repo, [str(source)])
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=workers)
    assert result.errors == []
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))
    restored = tmp_path / "restore" / "src" / "trailing-hole"
    assert os.stat(restored).st_blocks * 512 < 2 * MIB


def test_a_filesystem_without_o_direct_gets_buffered_writes(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    _big_tree(source)
    snapshot = backup_paths(repo, [str(source)])
    real_open = os.open
    refusals = 0

    def open_without_direct(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        nonlocal refusals
        if flags & direct_io.O_DIRECT:  # packs are read with it too
            refusals += bool(flags & os.O_WRONLY)
            if flags & os.O_CREAT:  # as some kernels do: created, then refused
                os.close(real_open(path, flags & ~direct_io.O_DIRECT, mode, dir_fd=dir_fd))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(restore_write.os, "open", open_without_direct)
    memory = restore_write.BatchMemory()
    monkeypatch.setattr(restore_workers, "BatchMemory", lambda: memory)
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    assert refusals == 1 and not memory.writes.enabled  # asked once, then never again
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))


def test_a_failing_direct_write_fails_its_file_and_only_it(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.close(_open_direct(tmp_path / "probe"))  # skips where O_DIRECT is refused
    source = tmp_path / "src"
    _big_tree(source)
    snapshot = backup_paths(repo, [str(source)])

    def failing(fd: int, view: memoryview, offset: int, buffer: AlignedBuffer) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(restore_direct, "_pwrite_direct", failing)
    target = tmp_path / "restore"
    result = restore_snapshot(repo, snapshot, str(target), workers=0)
    failed = dict(result.errors)
    assert sorted(failed) == ["/src/aligned", "/src/sparse", "/src/trailing-hole"]
    assert set(failed.values()) == {"cannot write: Input/output error"}
    assert sorted(os.listdir(target / "src")) == ["small"]  # the failed files are removed
    assert (target / "src" / "small").read_bytes() == (source / "small").read_bytes()


def test_a_device_that_refuses_direct_writes_gets_buffered_ones(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_DIRECT opens, but its writes are refused (a device with blocks over 4 KiB)."""
    source = tmp_path / "src"
    _big_tree(source)
    snapshot = backup_paths(repo, [str(source)])

    def refuse(fd: int, view: memoryview, offset: int, buffer: AlignedBuffer) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(restore_direct, "_pwrite_direct", refuse)
    memory = restore_write.BatchMemory()
    monkeypatch.setattr(restore_workers, "BatchMemory", lambda: memory)
    result = restore_snapshot(repo, snapshot, str(tmp_path / "restore"), workers=0)
    assert result.errors == []
    assert not memory.writes.enabled
    assert_same_tree(str(source), str(tmp_path / "restore" / "src"))


def test_only_big_files_are_written_direct() -> None:
    writes = restore_direct.DirectWrites()
    if not direct_io.O_DIRECT:
        assert not writes.wanted(1 << 40)
        return
    assert writes.wanted(restore_direct.DIRECT_FILE_MIN)
    assert not writes.wanted(restore_direct.DIRECT_FILE_MIN - 1)
    assert ALIGNMENT % 512 == 0
