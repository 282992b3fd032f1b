"""Pack objects: many stored blobs in one object, with their own sealed header.

Layout: blob bytes back to back | sealed header | header length (u32 LE) | b"BVP1".
The header lists (type, id, stored length, plaintext length) per blob in order, so the
index can be rebuilt from the packs alone (offsets are the running sum of lengths).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from backvault.repo.blob import BlobType
from backvault.repo.crypto import AuthenticationError, Sealer

PACK_MAGIC = b"BVP1"
_TRAILER = struct.Struct("<I4s")
_ENTRY = struct.Struct("<B32sII")
_HEADER_AAD = b"backvault pack header"


class PackEntry(NamedTuple):
    """Where one blob sits inside its pack (a tuple: an index load builds ~100k of them)."""

    type: BlobType
    id: bytes
    offset: int
    length: int
    raw_length: int


class PackBuilder:
    """Accumulates stored blobs in memory until the pack is big enough to upload."""

    def __init__(self) -> None:
        # One growing buffer: joining a list of parts at the end would hold the pack twice.
        self._data = bytearray()
        self.entries: list[PackEntry] = []
        self.size = 0

    def add(self, blob_type: BlobType, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        """Append one stored blob."""
        self.entries.append(PackEntry(blob_type, blob_id, self.size, len(stored), raw_length))
        self._data += stored
        self.size += len(stored)

    def finish(self, sealer: Sealer) -> bytearray:
        """Return the complete pack bytes (blobs, sealed header, trailer); the builder is emptied."""
        header = b"".join(_ENTRY.pack(e.type, e.id, e.length, e.raw_length) for e in self.entries)
        sealed = sealer.seal(header, _HEADER_AAD)
        data = self._data
        data += sealed
        data += _TRAILER.pack(len(sealed), PACK_MAGIC)
        self._data = bytearray()
        return data


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
