"""Reading blobs whose locations are already known, without the index (restore worker processes).

Blobs of one pack that lie close together are fetched with one ranged read: a restore of
many small files then costs one request per stretch of a pack instead of one per file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.crypto import MasterKey, Sealer
from backvault.repo.errors import DamagedDataError
from backvault.repo.index import Location
from backvault.repo.pack import pack_key
from backvault.storage.base import ObjectStore, StorageError

# Two wanted blobs this close in one pack are read together (the bytes between are discarded).
MERGE_GAP = 512 * 1024
# One read never spans more than this, so memory stays bounded whatever the batch asks for.
MAX_REGION = 24 * 1024 * 1024


def codec_for(secret: bytes, compression_level: int) -> BlobCodec:
    """The blob codec of a repository, rebuilt from its master secret (in a worker process)."""
    master = MasterKey(secret)
    return BlobCodec(Sealer(master.encryption_key), master.chunk_id_key, compression_level)


def _regions(located: list[tuple[Location, str]]) -> Iterator[list[tuple[Location, str]]]:
    """Group blobs sorted by offset into runs worth one ranged read each."""
    group: list[tuple[Location, str]] = []
    start = end = 0
    for item in located:
        location = item[0]
        if group and (
            location.offset - end > MERGE_GAP or location.offset + location.length - start > MAX_REGION
        ):
            yield group
            group = []
        if not group:
            start = location.offset
            end = location.offset + location.length
        else:
            end = max(end, location.offset + location.length)
        group.append(item)
    if group:
        yield group


def read_located(
    store: ObjectStore, codec: BlobCodec, wanted: Mapping[str, Sequence[Location]]
) -> Iterator[tuple[str, bytes | DamagedDataError]]:
    """Yield every wanted data blob (hex id -> its locations, preferred first) once, in pack order.

    A blob that cannot be read from its first location is tried at the others; when all
    fail, the error is yielded in place of the data.
    """
    by_pack: dict[str, list[tuple[Location, str]]] = {}
    for chunk_id, locations in wanted.items():
        by_pack.setdefault(locations[0].pack_id, []).append((locations[0], chunk_id))
    for pack_id, located in by_pack.items():
        located.sort(key=lambda item: item[0].offset)
        key = pack_key(pack_id)
        for group in _regions(located):
            start = group[0][0].offset
            end = max(location.offset + location.length for location, _ in group)
            try:
                region = memoryview(store.get_range(key, start, end - start))
            except StorageError:
                region = memoryview(b"")
            for location, chunk_id in group:
                piece = region[location.offset - start : location.offset - start + location.length]
                blob_id = bytes.fromhex(chunk_id)
                try:
                    if len(piece) != location.length:
                        raise ValueError("pack is missing or shorter than the index says")
                    yield chunk_id, codec.decode(BlobType.DATA, blob_id, piece)
                except ValueError as error:
                    yield chunk_id, _other_copies(store, codec, blob_id, wanted[chunk_id], key, error)
            del region


def _other_copies(
    store: ObjectStore,
    codec: BlobCodec,
    blob_id: bytes,
    locations: Sequence[Location],
    key: str,
    error: Exception,
) -> bytes | DamagedDataError:
    """Try the blob's other stored copies (after the first failed with error at key)."""
    last = DamagedDataError(key, str(error), blob_id.hex())
    for location in locations[1:]:
        other = pack_key(location.pack_id)
        try:
            return codec.decode(
                BlobType.DATA, blob_id, store.get_range(other, location.offset, location.length)
            )
        except (StorageError, ValueError) as failure:
            last = DamagedDataError(other, str(failure), blob_id.hex())
    return last
