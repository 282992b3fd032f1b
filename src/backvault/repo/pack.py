"""Pack objects: many stored blobs in one object, with their own sealed header.

Layout: blob bytes back to back | sealed header | header length (u32 LE) | b"BVP1".
The header lists (type, id, stored length, plaintext length) per blob in order, so the
index can be rebuilt from the packs alone (offsets are the running sum of lengths).
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

from backvault.repo.blob import BlobCodec, BlobType, Payload
from backvault.repo.crypto import OVERHEAD, AuthenticationError, Sealer
from backvault.storage.direct_io import private_memory

PACK_MAGIC = b"BVP1"
_TRAILER = struct.Struct("<I4s")
_ENTRY = struct.Struct("<B32sII")
_HEADER_AAD = b"backvault pack header"
# A pack's memory is reserved this big at first: pages are only backed once written.
_RESERVED = 32 * 1024 * 1024


class PackEntry(NamedTuple):
    """Where one blob sits inside its pack (a tuple: an index load builds ~100k of them)."""

    type: BlobType
    id: bytes
    offset: int
    length: int
    raw_length: int


class PackBuilder:
    """Accumulates stored blobs in memory until the pack is big enough to upload.

    The blobs are written into one buffer, which a writer hands to its next builder once
    the pack is stored (see buffer): its memory is faulted in once per backup, not once
    per pack (two fifths of a first backup's page faults). The buffer is an anonymous
    mapping: page aligned, so a local store writes the pack from it with O_DIRECT
    (storage/direct_io.py), and only the pages written count towards RSS.
    """

    def __init__(self, buffer: mmap.mmap | None = None) -> None:
        self._data = buffer if buffer is not None else private_memory(_RESERVED)
        self.entries: list[PackEntry] = []
        self.size = 0

    @property
    def buffer(self) -> mmap.mmap:
        """The memory of this pack, for another builder once its bytes are stored."""
        return self._data

    def _room(self, length: int) -> None:
        need = self.size + length
        if need <= len(self._data):
            return
        # Rare (a pack gets one blob more than the reserve holds): move to a mapping twice as big.
        bigger = private_memory(max(need, 2 * len(self._data)))
        bigger[: self.size] = self._data[: self.size]
        self._data = bigger  # the old one goes once no view of it is left

    def add(self, blob_type: BlobType, blob_id: bytes, stored: bytes | memoryview, raw_length: int) -> None:
        """Append one stored blob."""
        self._room(len(stored))
        self._data[self.size : self.size + len(stored)] = stored
        self.entries.append(PackEntry(blob_type, blob_id, self.size, len(stored), raw_length))
        self.size += len(stored)

    def add_payload(
        self, codec: BlobCodec, blob_type: BlobType, blob_id: bytes, payload: Payload, raw_length: int
    ) -> int:
        """Seal a blob's payload (BlobCodec.payload) straight into the pack; returns its stored length."""
        head, body = payload
        if self.size + len(head) + len(body) + OVERHEAD > len(self._data):
            self._room(len(head) + len(body) + OVERHEAD)
        with memoryview(self._data) as view:
            length = codec.seal_into(blob_type, blob_id, payload, view[self.size :])
        self.entries.append(PackEntry(blob_type, blob_id, self.size, length, raw_length))
        self.size += length
        return length

    def finish(self, sealer: Sealer) -> memoryview:
        """The complete pack (blobs, sealed header, trailer), a view of the buffer; the builder is done."""
        header = b"".join(_ENTRY.pack(e.type, e.id, e.length, e.raw_length) for e in self.entries)
        sealed = sealer.seal(header, _HEADER_AAD)
        tail = sealed + _TRAILER.pack(len(sealed), PACK_MAGIC)
        self._room(len(tail))
        end = self.size + len(tail)
        self._data[self.size : end] = tail
        return memoryview(self._data)[:end]


def parse_pack_header(pack: bytes | bytearray, sealer: Sealer) -> list[PackEntry]:
    """Read the entries of a whole pack from its own header; ValueError if damaged."""
    if len(pack) < _TRAILER.size:
        raise ValueError("pack too short for its trailer")
    header_length, magic = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    if magic != PACK_MAGIC:
        raise ValueError("pack trailer magic is wrong")
    header_end = len(pack) - _TRAILER.size
    header_start = header_end - header_length
    if header_start < 0:
        raise ValueError("pack header length out of range")
    try:
        header = sealer.open(memoryview(pack)[header_start:header_end], _HEADER_AAD)
    except AuthenticationError as error:
        raise ValueError("pack header failed authentication") from error
    if len(header) % _ENTRY.size:
        raise ValueError("pack header has a partial entry")
    entries: list[PackEntry] = []
    offset = 0
    for blob_type, blob_id, length, raw_length in _ENTRY.iter_unpack(header):
        entries.append(PackEntry(BlobType(blob_type), blob_id, offset, length, raw_length))
        offset += length
    if offset != header_start:
        raise ValueError("pack header does not account for the pack's blob bytes")
    return entries


def pack_key(pack_id: str) -> str:
    """Storage key of a pack."""
    return f"data/{pack_id[:2]}/{pack_id}"
