"""Reading blobs whose locations are already known, without the index (restore worker processes).

Blobs of one pack that lie close together are fetched with one ranged read: a restore of
many small files then costs one request per stretch of a pack instead of one per file,
and a local pack is opened once for all the stretches wanted from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.crypto import MasterKey, Sealer
from backvault.repo.errors import DamagedDataError
from backvault.repo.index import Location
from backvault.repo.pack import pack_key
from backvault.storage.base import ObjectStore, StorageError, read_ranges
from backvault.storage.direct_io import AlignedBuffer

# Two wanted blobs this close in one pack are read together (the bytes between are discarded).
MERGE_GAP = 512 * 1024
# One read never spans more than this (but for one bigger blob), so memory stays bounded
# whatever the batch asks for.
MAX_REGION = 8 * 1024 * 1024


def codec_for(secret: bytes, compression_level: int) -> BlobCodec:
    """The blob codec of a repository, rebuilt from its master secret (in a worker process)."""
    master = MasterKey(secret)
    return BlobCodec(Sealer(master.encryption_key), master.chunk_id_key, compression_level)


Group = list[tuple[Location, str]]  # blobs of one pack read with one ranged read


def _regions(located: Group) -> Iterator[Group]:
    """Group blobs sorted by offset into runs worth one ranged read each."""
    group: Group = []
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


def _span(group: Group) -> tuple[int, int]:
    """The (offset, length) of the one ranged read that covers a group."""
    start = group[0][0].offset
    end = max(location.offset + location.length for location, _ in group)
    return start, end - start


def _reads(groups: Iterator[Group]) -> Iterator[list[Group]]:
    """Gather consecutive groups of one pack into one store call of at most MAX_REGION bytes."""
    batch: list[Group] = []
    size = 0
    for group in groups:
        length = _span(group)[1]
        if batch and size + length > MAX_REGION:
            yield batch
            batch, size = [], 0
        batch.append(group)
        size += length
    if batch:
        yield batch


class PackReads:
    """Where a process reads pack regions (a restore worker keeps one for all its batches).

    Two buffers: while the blobs of one read are decoded and written, the next read fills
    the other one on a helper thread. Reads that bypass the page cache wait for the disk,
    and this wait no longer stops the decoding.
    """

    def __init__(self) -> None:
        self.buffers = (AlignedBuffer(), AlignedBuffer())


def read_located(
    store: ObjectStore,
    codec: BlobCodec,
    wanted: Mapping[str, Sequence[Location]],
    memory: PackReads | None = None,
) -> Iterator[tuple[str, bytes | DamagedDataError]]:
    """Yield every wanted data blob (hex id -> its locations, preferred first) once, in pack order.

    A blob that cannot be read from its first location is tried at the others; when all
    fail, the error is yielded in place of the data. The ranged reads of one pack go to
    the store together (one open of a local pack file), into memory's buffers when given;
    the blobs yielded never share that memory.
    """
    buffers = (memory or PackReads()).buffers
    by_pack: dict[str, Group] = {}
    for chunk_id, locations in wanted.items():
        by_pack.setdefault(locations[0].pack_id, []).append((locations[0], chunk_id))
    reads: list[tuple[str, list[Group]]] = []
    for pack_id, located in by_pack.items():
        located.sort(key=lambda item: item[0].offset)
        key = pack_key(pack_id)
        reads.extend((key, groups) for groups in _reads(_regions(located)))
    if not reads:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-read") as reader:
        ahead = reader.submit(_fetch, store, *reads[0], buffers[0])
        for number, (key, groups) in enumerate(reads):
            regions = ahead.result()
            if number + 1 < len(reads):  # into the buffer whose blobs are all out
                ahead = reader.submit(_fetch, store, *reads[number + 1], buffers[(number + 1) % 2])
            for index, group in enumerate(groups):
                region, regions[index] = regions[index], b""  # freed once its blobs are out
                yield from _decode_group(store, codec, wanted, key, group, region)


def _fetch(
    store: ObjectStore, key: str, groups: list[Group], buffer: AlignedBuffer
) -> list[bytes | memoryview]:
    """Read the span of every group from one pack (b"" for each when the pack cannot be read).

    A store that can read into memory given to it (LocalStore.get_ranges_into) reads into
    buffer: the views returned are valid until buffer is used again.
    """
    spans = [_span(group) for group in groups]
    get_ranges_into: Callable[[str, list[tuple[int, int]], AlignedBuffer], list[memoryview]] | None = getattr(
        store, "get_ranges_into", None
    )
    try:
        if get_ranges_into is not None:
            return [*get_ranges_into(key, spans, buffer)]
        return [*read_ranges(store, key, spans)]
    except StorageError:
        return [b""] * len(groups)


def _decode_group(
    store: ObjectStore,
    codec: BlobCodec,
    wanted: Mapping[str, Sequence[Location]],
    key: str,
    group: Group,
    region: bytes | memoryview,
) -> Iterator[tuple[str, bytes | DamagedDataError]]:
    """Decode each blob of a group from the region read for it (other copies when that fails)."""
    view = memoryview(region)
    start = group[0][0].offset
    for location, chunk_id in group:
        piece = view[location.offset - start : location.offset - start + location.length]
        blob_id = bytes.fromhex(chunk_id)
        try:
            if len(piece) != location.length:
                raise ValueError("pack is missing or shorter than the index says")
            yield chunk_id, codec.decode(BlobType.DATA, blob_id, piece)
        except ValueError as error:
            yield chunk_id, _other_copies(store, codec, blob_id, wanted[chunk_id], key, error)


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
