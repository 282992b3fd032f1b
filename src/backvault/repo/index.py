"""The chunk index: which pack holds each blob, kept in immutable index objects.

An index object lists packs and their blobs; it may name older index objects it
supersedes (written by prune), which are then ignored and later deleted.
Memory: one dict entry per blob, a 32-byte key and a 5-tuple value sharing the pack-id
string (measured in docs/repository-format.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import zstandard

from backvault.repo import canonical_json
from backvault.repo.blob import BlobType
from backvault.repo.crypto import AuthenticationError, Sealer
from backvault.repo.pack import PackEntry

INDEX_AAD = b"backvault index"
_BLOB_TYPES = {int(blob_type): blob_type for blob_type in BlobType}


class Location(NamedTuple):
    """Where one blob is stored."""

    pack_id: str
    type: BlobType
    offset: int
    length: int
    raw_length: int


class IndexDocument(NamedTuple):
    """The content of one index object."""

    packs: dict[str, list[PackEntry]]
    supersedes: list[str]


def encode_index(packs: dict[str, list[PackEntry]], supersedes: Iterable[str], sealer: Sealer) -> bytes:
    """Serialise, compress and seal an index object."""
    document = {
        "supersedes": sorted(supersedes),
        "packs": [
            {
                "id": pack_id,
                "blobs": [[int(e.type), e.id.hex(), e.offset, e.length, e.raw_length] for e in entries],
            }
            for pack_id, entries in sorted(packs.items())
        ],
    }
    plain = canonical_json.dumps(document)
    return sealer.seal(zstandard.ZstdCompressor(level=3).compress(plain), INDEX_AAD)


def decode_index(data: bytes, sealer: Sealer) -> IndexDocument:
    """Open and parse an index object; ValueError if damaged."""
    try:
        plain = zstandard.ZstdDecompressor().decompress(sealer.open(data, INDEX_AAD))
        document = canonical_json.loads(plain)
        types = _BLOB_TYPES  # a dict lookup instead of the enum's slower constructor
        from_hex, new = bytes.fromhex, tuple.__new__  # NamedTuple's own __new__ is Python, 4x slower
        packs = {
            item["id"]: [
                new(PackEntry, (types[t], from_hex(blob_id), offset, length, raw))
                for t, blob_id, offset, length, raw in item["blobs"]
            ]
            for item in document["packs"]
        }
        return IndexDocument(packs, list(document["supersedes"]))
    except (AuthenticationError, zstandard.ZstdError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"index object unreadable ({error})") from error


class ChunkIndex:
    """In-memory map from blob id to its location(s); not thread-safe by itself."""

    def __init__(self) -> None:
        self._locations: dict[bytes, Location] = {}
        self._extra: dict[bytes, list[Location]] = {}  # rare: the same blob in several packs
        self.packs: dict[str, list[bytes]] = {}
        self.condemned_packs: set[str] = set()  # marked for deletion by prune

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry]) -> None:
        """Record every blob of a pack."""
        if pack_id in self.packs:
            return
        ids: list[bytes] = []
        known, new = self._locations, tuple.__new__  # one pass per blob of every index load
        for kind, blob_id, offset, length, raw_length in entries:
            location = new(Location, (pack_id, kind, offset, length, raw_length))
            if blob_id not in known:
                known[blob_id] = location
            else:
                self._extra.setdefault(blob_id, []).append(location)
            ids.append(blob_id)
        self.packs[pack_id] = ids

    def locations(self, blob_id: bytes) -> list[Location]:
        """All known locations of a blob, ones outside condemned packs first."""
        first = self._locations.get(blob_id)
        if first is None:
            return []
        extra = self._extra.get(blob_id)
        if extra is None:
            return [first]
        found = [first, *extra]
        return sorted(found, key=lambda loc: loc.pack_id in self.condemned_packs)

    def lookup(self, blob_id: bytes) -> Location | None:
        """The preferred location of a blob, or None."""
        found = self.locations(blob_id)
        return found[0] if found else None

    def has_live(self, blob_id: bytes) -> bool:
        """True when the blob is stored in a pack that prune has not condemned (safe to dedup against)."""
        first = self._locations.get(blob_id)
        if first is None:
            return False
        if first.pack_id not in self.condemned_packs:
            return True  # the usual answer, without building a list of locations
        return any(loc.pack_id not in self.condemned_packs for loc in self._extra.get(blob_id, ()))

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._locations

    def __len__(self) -> int:
        return len(self._locations)

    def entries_of(self, pack_id: str) -> Iterator[tuple[bytes, Location]]:
        """The blobs recorded for one pack."""
        for blob_id in dict.fromkeys(self.packs.get(pack_id, [])):
            for location in self.locations(blob_id):
                if location.pack_id == pack_id:
                    yield blob_id, location
