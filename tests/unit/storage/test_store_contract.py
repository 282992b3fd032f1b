"""The contract every ObjectStore backend must honour, run over each backend."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backvault.storage.base import ObjectExistsError, ObjectNotFoundError, ObjectStore, read_ranges
from backvault.storage.local import LocalStore
from backvault.storage.s3 import S3Store

S3_PREFIX = "tenant/repo"


def payload(size: int, seed: int = 0) -> bytes:
    """Return size reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """Yield an empty store of each backend kind."""
    if request.param == "local":
        yield LocalStore(tmp_path / "repo")
        return
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    s3 = S3Store(
        bucket,
        S3_PREFIX,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    try:
        yield s3
    finally:
        s3.close()


def test_put_then_get_returns_the_same_bytes(store: ObjectStore) -> None:
    data = payload(4096, seed=1)
    store.put("data/ab/abcdef", data)
    assert store.get("data/ab/abcdef") == data


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("config", b"first version")
    store.put("config", b"second")
    assert store.get("config") == b"second"
    assert store.stat("config").size == len(b"second")


def test_readers_see_the_old_or_the_new_object_never_a_mix(store: ObjectStore) -> None:
    old, new = b"o" * (512 * 1024), b"n" * (512 * 1024 + 7)
    store.put("index/current", old)
    seen: set[bytes] = set()
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            seen.add(store.get("index/current"))

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for round_number in range(20):
            store.put("index/current", new if round_number % 2 == 0 else old)
    finally:
        done.set()
        reader.join()
    assert seen <= {old, new}
    assert seen  # The reader really read something.


def test_put_new_creates_a_missing_key(store: ObjectStore) -> None:
    store.put_new("locks/one", b"lock body")
    assert store.get("locks/one") == b"lock body"


def test_put_new_refuses_an_existing_key_and_keeps_the_original(store: ObjectStore) -> None:
    store.put("locks/exclusive", b"original")
    with pytest.raises(ObjectExistsError) as caught:
        store.put_new("locks/exclusive", b"intruder")
    assert caught.value.key == "locks/exclusive"
    assert store.get("locks/exclusive") == b"original"


def test_missing_keys_raise_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        store.get("data/no/such")
    assert caught.value.key == "data/no/such"
    with pytest.raises(ObjectNotFoundError):
        store.get_range("data/no/such", 0, 10)
    with pytest.raises(ObjectNotFoundError):
        store.get_range("data/no/such", 0, 0)
    with pytest.raises(ObjectNotFoundError):
        store.stat("data/no/such")


def test_get_range_returns_exactly_the_requested_bytes(store: ObjectStore) -> None:
    data = payload(10_000, seed=2)
    store.put("packs/p1", data)
    assert store.get_range("packs/p1", 0, 100) == data[:100]
    assert store.get_range("packs/p1", 1234, 4321) == data[1234 : 1234 + 4321]
    assert store.get_range("packs/p1", 9_999, 1) == data[-1:]
    assert store.get_range("packs/p1", 500, 0) == b""


def test_get_range_past_the_end_returns_what_exists(store: ObjectStore) -> None:
    data = payload(1000, seed=3)
    store.put("packs/p2", data)
    assert store.get_range("packs/p2", 900, 500) == data[900:]
    assert store.get_range("packs/p2", 1000, 10) == b""
    assert store.get_range("packs/p2", 5000, 10) == b""


def test_get_range_rejects_negative_arguments(store: ObjectStore) -> None:
    store.put("packs/p3", b"abc")
    with pytest.raises(ValueError, match="offset"):
        store.get_range("packs/p3", -1, 2)
    with pytest.raises(ValueError, match="length"):
        store.get_range("packs/p3", 0, -2)


def test_read_ranges_returns_what_get_range_returns_for_each(store: ObjectStore) -> None:
    data = payload(10_000, seed=6)
    store.put("packs/p4", data)
    ranges = [(0, 100), (5_000, 0), (9_990, 50), (20_000, 5), (1234, 4321), (0, 100)]
    assert read_ranges(store, "packs/p4", ranges) == [
        data[:100],
        b"",
        data[9_990:],
        b"",
        data[1234 : 1234 + 4321],
        data[:100],
    ]
    assert read_ranges(store, "packs/p4", []) == []


def test_read_ranges_of_a_missing_key_raise_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        read_ranges(store, "data/no/such", [(0, 10), (20, 5)])
    assert caught.value.key == "data/no/such"


def test_read_ranges_reject_negative_arguments(store: ObjectStore) -> None:
    store.put("packs/p5", b"abc")
    with pytest.raises(ValueError, match="offset"):
        read_ranges(store, "packs/p5", [(0, 1), (-1, 2)])


def test_stat_reports_size_and_a_recent_modification_time(store: ObjectStore) -> None:
    store.put("snapshots/s1", b"x" * 777)
    info = store.stat("snapshots/s1")
    assert info.key == "snapshots/s1"
    assert info.size == 777
    assert abs(info.modified - time.time()) < 300


def test_exists_follows_put_and_delete(store: ObjectStore) -> None:
    assert not store.exists("keys/k1")
    store.put("keys/k1", b"key material")
    assert store.exists("keys/k1")
    assert not store.exists("keys")  # A key's parent "directory" is not an object.
    store.delete("keys/k1")
    assert not store.exists("keys/k1")
    with pytest.raises(ObjectNotFoundError):
        store.get("keys/k1")


def test_deleting_a_missing_key_is_not_an_error(store: ObjectStore) -> None:
    store.delete("never/written")
    store.put("once", b"1")
    store.delete("once")
    store.delete("once")
    assert not store.exists("once")


def test_list_yields_every_key_relative_to_the_store(store: ObjectStore) -> None:
    objects = {
        "config": b"c",
        "data/ab/ab01": b"12",
        "data/ab/ab02": b"345",
        "data/cd/cd01": b"6789",
        "index/i1": b"",
        "snapshots/2024/s1": b"s",
    }
    for key, data in objects.items():
        store.put(key, data)
    listed = {info.key: info.size for info in store.list()}
    assert listed == {key: len(data) for key, data in objects.items()}


def test_list_with_a_prefix_yields_only_matching_keys(store: ObjectStore) -> None:
    for key in ("data/ab/ab01", "data/ab/ab02", "data/abc/x", "data/cd/cd01", "database", "index/i1"):
        store.put(key, key.encode())
    assert sorted(info.key for info in store.list("data/")) == [
        "data/ab/ab01",
        "data/ab/ab02",
        "data/abc/x",
        "data/cd/cd01",
    ]
    assert sorted(info.key for info in store.list("data/ab/")) == ["data/ab/ab01", "data/ab/ab02"]
    assert sorted(info.key for info in store.list("data/ab")) == [
        "data/ab/ab01",
        "data/ab/ab02",
        "data/abc/x",
    ]
    assert sorted(info.key for info in store.list("data")) == [
        "data/ab/ab01",
        "data/ab/ab02",
        "data/abc/x",
        "data/cd/cd01",
        "database",
    ]
    assert list(store.list("nothing/")) == []


def test_list_of_an_empty_store_is_empty(store: ObjectStore) -> None:
    assert list(store.list()) == []
    assert list(store.list("data/")) == []


def test_empty_objects_are_stored(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.stat("empty").size == 0
    assert store.get_range("empty", 0, 10) == b""
    store.put_new("empty-new", memoryview(b""))
    assert store.get("empty-new") == b""


def test_objects_over_one_mebibyte_round_trip(store: ObjectStore) -> None:
    data = payload(3 * 1024 * 1024 + 17, seed=4)
    store.put("packs/large", data)
    assert store.get("packs/large") == data
    assert store.stat("packs/large").size == len(data)
    assert store.get_range("packs/large", 2 * 1024 * 1024, 1024 * 1024 + 17) == data[2 * 1024 * 1024 :]


def test_memoryview_input_stores_exactly_the_viewed_bytes(store: ObjectStore) -> None:
    buffer = bytearray(payload(2 * 1024 * 1024, seed=5))
    view = memoryview(buffer)[100 : 100 + 1024 * 1024 + 3]
    store.put("packs/from-view", view)
    store.put_new("packs/from-view-new", view)
    expected = bytes(buffer[100 : 100 + 1024 * 1024 + 3])
    assert store.get("packs/from-view") == expected
    assert store.get("packs/from-view-new") == expected


def test_memoryview_of_wider_items_is_stored_as_its_raw_bytes(store: ObjectStore) -> None:
    words = memoryview(bytearray(b"\x01\x02\x03\x04" * 4)).cast("I")
    store.put("raw", words)
    assert store.get("raw") == b"\x01\x02\x03\x04" * 4


@pytest.mark.parametrize("key", ["", "/absolute", "a//b", "trailing/", "../escape", "a/../b", "a/./b"])
def test_invalid_keys_are_rejected_with_a_clear_message(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="object key"):
        store.get(key)


@pytest.mark.parametrize("prefix", ["/data", "../", "data//", "a/./"])
def test_invalid_list_prefix_is_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="listing prefix"):
        list(store.list(prefix))
