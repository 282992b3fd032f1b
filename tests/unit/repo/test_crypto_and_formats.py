"""Sealing, keys, blobs, packs and index objects: round trips, and every tamper detected."""

from __future__ import annotations

import os

import pytest

from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.crypto import OVERHEAD, AuthenticationError, MasterKey, Sealer, content_hash
from backvault.repo.index import ChunkIndex, decode_index, encode_index
from backvault.repo.keys import make_key_object, unwrap_key_object
from backvault.repo.pack import PackBuilder, parse_pack_header


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def codec(master: MasterKey) -> BlobCodec:
    return BlobCodec(Sealer(master.encryption_key), master.chunk_id_key, 3)


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x40]) + data[position + 1 :]


def finished_pack(builder: PackBuilder, master: MasterKey, codec: BlobCodec, blobs: list[bytes]) -> bytes:
    """Finish the pack and check that its header lists, and its bytes hold, exactly these blobs."""
    pack = bytes(builder.finish(Sealer(master.encryption_key)))
    entries = parse_pack_header(pack, Sealer(master.encryption_key))
    assert [entry.raw_length for entry in entries] == [len(blob) for blob in blobs]
    for entry, blob in zip(entries, blobs, strict=True):
        assert codec.decode(BlobType.DATA, entry.id, pack[entry.offset : entry.offset + entry.length]) == blob
    return pack


def test_seal_round_trip_and_fresh_salt_each_time(master: MasterKey) -> None:
    sealer = Sealer(master.encryption_key)
    first = sealer.seal(b"secret", b"ad")
    second = sealer.seal(b"secret", b"ad")
    assert first != second  # a new salt, hence a new key, per message
    assert len(first) == len(b"secret") + OVERHEAD
    assert sealer.open(first, b"ad") == b"secret"


@pytest.mark.parametrize("head", [b"", b"\x01"])
@pytest.mark.parametrize("size", [0, 2000, 256 * 1024 - 1, 256 * 1024, 9 * 1024 * 1024])
def test_seal_into_writes_what_open_reads_and_nothing_past_it(
    master: MasterKey, size: int, head: bytes
) -> None:
    # From 256 KiB on, head and plaintext are encrypted in two steps: open must not tell.
    sealer = Sealer(master.encryption_key)
    plaintext = os.urandom(size)
    out = bytearray(b"-" * (len(head) + size + OVERHEAD + 5))
    written = sealer.seal_into(memoryview(plaintext), b"ad", memoryview(out)[2:], head)
    assert written == len(head) + size + OVERHEAD
    assert out[:2] == b"--" and out[2 + written :] == b"---"
    assert sealer.open(bytes(out[2 : 2 + written]), b"ad") == head + plaintext
    with pytest.raises(AuthenticationError):
        sealer.open(bytes(out[2 : 2 + written]), b"other")
    with pytest.raises(ValueError, match="no room"):
        sealer.seal_into(plaintext, b"ad", memoryview(out)[6:], head)


def test_pack_built_from_payloads_in_a_reused_buffer_reads_back(master: MasterKey, codec: BlobCodec) -> None:
    used = PackBuilder()
    used.add_payload(codec, BlobType.DATA, b"\0" * 32, codec.payload(os.urandom(5 << 20)), 5 << 20)
    with used.finish(Sealer(master.encryption_key)):
        pass
    builder = PackBuilder(used.buffer)  # old bytes beyond what is written must not leak in
    blobs = [b"text " * 500, os.urandom(3000), b"", os.urandom(2 << 20)]
    for plaintext in blobs:
        blob_id = codec.blob_id(BlobType.DATA, plaintext)
        builder.add_payload(codec, BlobType.DATA, blob_id, codec.payload(plaintext), len(plaintext))
    finished_pack(builder, master, codec, blobs)


def test_seal_detects_any_flipped_byte_and_wrong_associated_data(master: MasterKey) -> None:
    sealer = Sealer(master.encryption_key)
    sealed = sealer.seal(b"x" * 100, b"ad")
    for position in (0, 10, 30, len(sealed) - 1):
        with pytest.raises(AuthenticationError):
            sealer.open(flip(sealed, position), b"ad")
    with pytest.raises(AuthenticationError):
        sealer.open(sealed, b"other")
    with pytest.raises(AuthenticationError):
        Sealer(MasterKey.generate().encryption_key).open(sealed, b"ad")


def test_key_object_opens_only_with_its_passphrase(master: MasterKey) -> None:
    data = make_key_object(master, "correct horse")
    assert unwrap_key_object(data, "correct horse") == master
    assert unwrap_key_object(data, "wrong") is None
    assert master.secret.hex() not in data.decode()


def test_empty_passphrase_is_refused(master: MasterKey) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        make_key_object(master, "")


def test_blob_ids_are_keyed_and_typed(master: MasterKey, codec: BlobCodec) -> None:
    other = BlobCodec(Sealer(master.encryption_key), MasterKey.generate().chunk_id_key, 3)
    assert codec.blob_id(BlobType.DATA, b"abc") != other.blob_id(BlobType.DATA, b"abc")
    assert codec.blob_id(BlobType.DATA, b"abc") != codec.blob_id(BlobType.TREE, b"abc")


def test_blob_compresses_text_and_stores_random_data_raw(codec: BlobCodec) -> None:
    text = b"backup restore vault plan " * 40000
    noise = os.urandom(1 << 20)
    for plaintext, compressed in ((text, True), (noise, False)):
        blob_id = codec.blob_id(BlobType.DATA, plaintext)
        stored = codec.encode(BlobType.DATA, blob_id, plaintext)
        assert (len(stored) < len(plaintext) // 10) is compressed
        assert len(stored) <= len(plaintext) + OVERHEAD + 1
        assert codec.decode(BlobType.DATA, blob_id, stored) == plaintext


@pytest.mark.parametrize("level", [1, 3, 9])
def test_blob_of_every_size_class_compresses_and_reads_back(master: MasterKey, level: int) -> None:
    # Each size class has its own compressor, and fast levels cap zstd's tables: every one
    # must still write frames that shrink text and decode to the same bytes.
    codec = BlobCodec(Sealer(master.encryption_key), master.chunk_id_key, level)
    line = b"INSERT INTO orders VALUES (%d, 'cust-%06d', 'vault', %d.25);\n"
    for size in (3000, 200_000, 3_000_000):
        text = b"".join(line % (n, n * 7919 % 50000, n % 977) for n in range(size // 40))[:size]
        blob_id = codec.blob_id(BlobType.DATA, text)
        stored = codec.encode(BlobType.DATA, blob_id, text)
        assert len(stored) < len(text) // 2
        assert codec.decode(BlobType.DATA, blob_id, stored) == text


def test_blob_decode_rejects_tampering_and_type_confusion(codec: BlobCodec) -> None:
    blob_id = codec.blob_id(BlobType.DATA, b"payload" * 100)
    stored = codec.encode(BlobType.DATA, blob_id, b"payload" * 100)
    with pytest.raises(ValueError):
        codec.decode(BlobType.DATA, blob_id, flip(stored, len(stored) // 2))
    with pytest.raises(ValueError):
        codec.decode(BlobType.TREE, blob_id, stored)
    with pytest.raises(ValueError):
        codec.decode(BlobType.DATA, bytes(32), stored)


def test_pack_header_rebuilds_the_entries(master: MasterKey, codec: BlobCodec) -> None:
    builder = PackBuilder()
    blobs = [os.urandom(1000 + n) for n in range(5)]
    for blob in blobs:
        blob_id = codec.blob_id(BlobType.DATA, blob)
        builder.add(BlobType.DATA, blob_id, codec.encode(BlobType.DATA, blob_id, blob), len(blob))
    pack = finished_pack(builder, master, codec, blobs)
    with pytest.raises(ValueError):
        parse_pack_header(flip(pack, len(pack) - 20), Sealer(master.encryption_key))


def test_index_object_round_trip_and_supersedes(master: MasterKey, codec: BlobCodec) -> None:
    sealer = Sealer(master.encryption_key)
    builder = PackBuilder()
    blob_id = codec.blob_id(BlobType.DATA, b"data")
    builder.add(BlobType.DATA, blob_id, codec.encode(BlobType.DATA, blob_id, b"data"), 4)
    data = encode_index({"p1": builder.entries}, ["old1"], sealer)
    document = decode_index(data, sealer)
    assert document.supersedes == ["old1"]
    assert document.packs["p1"] == builder.entries
    with pytest.raises(ValueError):
        decode_index(flip(data, 40), sealer)
    index = ChunkIndex()
    index.add_pack("p1", builder.entries)
    index.add_pack("p2", builder.entries)
    index.condemned_packs = {"p1"}
    assert index.lookup(blob_id) is not None and index.lookup(blob_id).pack_id == "p2"  # type: ignore[union-attr]
    assert index.has_live(blob_id)
    index.condemned_packs = {"p1", "p2"}
    assert not index.has_live(blob_id) and blob_id in index


def test_content_hash_names_objects() -> None:
    assert content_hash(b"abc") == content_hash(memoryview(b"abc"))
    assert content_hash(b"abc") != content_hash(b"abd")
    assert len(content_hash(b"")) == 64


def test_pack_builder_grows_even_while_a_view_of_its_old_memory_lives(
    master: MasterKey, codec: BlobCodec
) -> None:
    builder = PackBuilder(bytearray(16))
    stale = memoryview(builder.buffer)  # e.g. kept by a traceback after a failed upload
    blob = os.urandom(3 << 20)
    blob_id = codec.blob_id(BlobType.DATA, blob)
    builder.add_payload(codec, BlobType.DATA, blob_id, codec.payload(blob), len(blob))
    finished_pack(builder, master, codec, [blob])
    stale.release()
