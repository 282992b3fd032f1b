"""LocalStore specifics: temp files, key validation, create-only races, durability, open_store."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import backvault
from backvault.storage import direct_io
from backvault.storage.base import ObjectExistsError, ObjectNotFoundError, StorageError
from backvault.storage.direct_io import AlignedBuffer
from backvault.storage.local import TEMP_PREFIX, LocalStore
from backvault.storage.s3 import S3Store
from backvault.storage.url import open_store


def files_under(root: Path) -> list[str]:
    """Return every file below root, relative, with '/' separators."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "repo")
    assert list(store.list()) == []  # A root that does not exist yet is an empty store.
    store.put("data/ab/abcd", b"chunk")
    assert (tmp_path / "new" / "repo" / "data" / "ab" / "abcd").read_bytes() == b"chunk"
    assert store.location == str(tmp_path / "new" / "repo")


def test_writes_leave_no_temp_files_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    store.put("a/b", b"2")
    store.put_new("a/c", b"3")
    with pytest.raises(ObjectExistsError):
        store.put_new("a/c", b"4")
    assert files_under(tmp_path) == ["a/b", "a/c"]


def test_temp_files_of_interrupted_writes_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("data/ab/ab01", b"real")
    # What a writer killed between creating and renaming its temp file leaves behind.
    (tmp_path / f"{TEMP_PREFIX}0123").write_bytes(b"partial")
    (tmp_path / "data" / "ab" / f"{TEMP_PREFIX}4567").write_bytes(b"partial")
    assert [info.key for info in store.list()] == ["data/ab/ab01"]
    assert [info.key for info in store.list("data/ab/")] == ["data/ab/ab01"]


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        ("/etc/passwd", "start with '/'"),
        ("a//b", "empty segment"),
        ("dir/", "empty segment"),
        ("..", "'..'"),
        ("../outside", "'..'"),
        ("data/../../outside", "'..'"),
        (".", "'.'"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        (f"{TEMP_PREFIX}abc", "reserved"),
        (f"data/{TEMP_PREFIX}abc", "reserved"),
    ],
)
def test_invalid_keys_are_rejected_before_touching_the_disk(tmp_path: Path, key: str, problem: str) -> None:
    store = LocalStore(tmp_path / "repo")
    for operation in (
        lambda: store.put(key, b"x"),
        lambda: store.put_new(key, b"x"),
        lambda: store.get(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.get_ranges(key, [(0, 1)]),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="object key") as caught:
            operation()
        assert problem in str(caught.value)
    assert not (tmp_path / "repo").exists()
    assert not (tmp_path / "outside").exists()


def test_put_new_race_between_threads_has_exactly_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    writers = 8
    for round_number in range(20):
        key = f"locks/round-{round_number}"
        barrier = threading.Barrier(writers)
        winners: list[int] = []
        losers: list[int] = []

        def write(
            writer: int,
            key: str = key,
            barrier: threading.Barrier = barrier,
            winners: list[int] = winners,
            losers: list[int] = losers,
        ) -> None:
            barrier.wait()
            try:
                store.put_new(key, f"writer {writer}".encode())
                winners.append(writer)
            except ObjectExistsError:
                losers.append(writer)

        threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, f"round {round_number}: winners {winners}"
        assert len(losers) == writers - 1
        assert store.get(key) == f"writer {winners[0]}".encode()
    assert not [name for name in files_under(tmp_path) if TEMP_PREFIX in name]


RACE_SCRIPT = """
import sys, time
from backvault.storage.base import ObjectExistsError
from backvault.storage.local import LocalStore
root, writer, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = LocalStore(root)
while time.time() < start:
    time.sleep(0.001)
results = []
for round_number in range(10):
    try:
        store.put_new(f"locks/round-{round_number}", f"process {writer}".encode())
        results.append("won")
    except ObjectExistsError:
        results.append("lost")
print(",".join(results))
"""


def test_put_new_race_between_processes_has_exactly_one_winner(tmp_path: Path) -> None:
    source_root = str(Path(backvault.__file__).resolve().parent.parent)
    search_path = [source_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path)}
    start = time.time() + 1.5  # Let every interpreter start before the race begins.
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, str(tmp_path), str(writer), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
        )
        for writer in range(4)
    ]
    outcomes: list[list[str]] = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        outcomes.append(stdout.strip().split(","))
    store = LocalStore(tmp_path)
    for round_number in range(10):
        won_by = [writer for writer, results in enumerate(outcomes) if results[round_number] == "won"]
        assert len(won_by) == 1, f"round {round_number}: won by {won_by}"
        assert store.get(f"locks/round-{round_number}") == f"process {won_by[0]}".encode()


def test_put_new_without_hard_links_still_refuses_existing_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, destination: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalStore(tmp_path)
    store.put_new("locks/a", b"first")
    with pytest.raises(ObjectExistsError):
        store.put_new("locks/a", b"second")
    assert store.get("locks/a") == b"first"
    assert files_under(tmp_path) == ["locks/a"]


def test_writes_fsync_the_file_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    store = LocalStore(tmp_path)
    store.put("existing-dir-marker", b"")
    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.put("object", b"payload")
    assert synced == ["file", "directory"]
    synced.clear()
    store.put_new("other", b"payload")
    assert synced == ["file", "directory"]


def test_get_ranges_opens_the_file_once_for_all_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    data = os.urandom(100_000)
    store.put("data/ab/pack", data)
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        opened.append(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", recording_open)
    ranges = [(0, 10), (50_000, 1000), (99_990, 100), (10, 0)]
    assert store.get_ranges("data/ab/pack", ranges) == [data[0:10], data[50_000:51_000], data[99_990:], b""]
    assert len(opened) == 1


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_get_ranges_into_reads_into_the_buffer_given(tmp_path: Path, direct: bool) -> None:
    store = LocalStore(tmp_path)
    store._direct = direct  # both read paths, whatever the filesystem takes
    data = os.urandom(100_000)
    store.put("data/ab/pack", data)
    buffer = AlignedBuffer()
    ranges = [(0, 10), (50_000, 1000), (99_990, 100), (10, 0), (200_000, 5)]
    views = store.get_ranges_into("data/ab/pack", ranges, buffer)
    assert [bytes(view) for view in views] == [data[0:10], data[50_000:51_000], data[99_990:], b"", b""]
    memory = buffer.take(1)
    memory[0] ^= 1
    assert views[0][0] == memory[0]  # views of the buffer, not copies
    memory.release()
    with pytest.raises(ObjectNotFoundError):
        store.get_ranges_into("data/ab/missing", [(0, 1)], buffer)
    with pytest.raises(ValueError, match="must be >= 0"):
        store.get_ranges_into("data/ab/pack", [(-1, 1)], buffer)


@pytest.mark.parametrize("size", [1 << 20, 3 * (1 << 20) + 77])
def test_big_objects_are_stored_exactly_from_any_memory(tmp_path: Path, size: int) -> None:
    store = LocalStore(tmp_path)
    data = os.urandom(size)
    aligned = mmap.mmap(-1, size)  # page aligned, as a pack builder's memory is
    aligned[:] = data
    store.put_new("data/ab/from-bytes", data)
    store.put_new("data/ab/from-aligned", memoryview(aligned))
    assert store.get("data/ab/from-bytes") == data == store.get("data/ab/from-aligned")
    assert files_under(tmp_path) == ["data/ab/from-aligned", "data/ab/from-bytes"]


def test_a_filesystem_without_o_direct_gets_buffered_writes_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    real_open = os.open
    refused: list[int] = []

    def open_without_direct(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & direct_io.O_DIRECT:
            refused.append(flags)
            if flags & os.O_CREAT:  # as some kernels do: created, then refused
                os.close(real_open(path, flags & ~direct_io.O_DIRECT, mode, dir_fd=dir_fd))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_without_direct)
    data = os.urandom(2 << 20)
    store.put_new("data/ab/pack", data)
    store.put_new("data/ab/other", data[1:])
    views = store.get_ranges_into("data/ab/pack", [(5, 10_000)], AlignedBuffer())
    assert bytes(views[0]) == data[5:10_005]
    assert len(refused) == (1 if direct_io.O_DIRECT else 0)  # asked once, then never again
    assert files_under(tmp_path) == ["data/ab/other", "data/ab/pack"]


def test_an_object_in_the_way_of_a_directory_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("data", b"a file where a directory would go")
    with pytest.raises(StorageError, match="put of 'data/ab'"):
        store.put("data/ab", b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get("data/ab")
    assert not store.exists("data/ab")
    assert store.get("data") == b"a file where a directory would go"


def test_a_directory_is_not_an_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("data/ab/ab01", b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get("data/ab")
    with pytest.raises(ObjectNotFoundError):
        store.get_range("data/ab", 0, 1)
    with pytest.raises(ObjectNotFoundError):
        store.get_ranges("data/ab", [(0, 1), (2, 1)])
    with pytest.raises(ObjectNotFoundError):
        store.stat("data")
    store.delete("data")
    assert store.get("data/ab/ab01") == b"x"


def test_open_store_opens_a_local_directory_from_a_path_or_file_url(tmp_path: Path) -> None:
    by_path = open_store(str(tmp_path))
    by_url = open_store(f"file://{tmp_path}")
    assert isinstance(by_path, LocalStore) and isinstance(by_url, LocalStore)
    by_path.put("k", b"v")
    assert by_url.get("k") == b"v"
    assert by_url.location == str(tmp_path)


def test_open_store_opens_an_s3_store_from_an_s3_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKVAULT_S3_ENDPOINT", raising=False)
    store = open_store("s3://my-bucket/some/prefix/", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert isinstance(store, S3Store)
    try:
        assert store.location == "s3://my-bucket/some/prefix"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://user:secret@bucket/x", "credentials"),
        ("s3://minio.local:9000/bucket", "endpoint"),
        ("s3://bucket/a//b", "segments"),
        ("s3://bucket/a/../b", "segments"),
        ("s3://bucket/x?versionId=1", "'?'"),
        ("s3://bad_bucket!/x", "invalid S3 bucket"),
        ("file://", "no path"),
        ("gs://bucket/x", "unsupported storage scheme 'gs'"),
        ("sftp://host/path", "unsupported storage scheme"),
    ],
)
def test_open_store_rejects_malformed_locations(location: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(location)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)
