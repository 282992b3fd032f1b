"""Blob encoding: chunk ids, compression and sealing of one chunk or tree.

Stored blob = seal(flag || payload, aad = type byte || chunk id), flag 0 = raw, 1 = zstd.
"""

from __future__ import annotations

import enum
import threading

import blake3
import zstandard

from backvault.repo.crypto import AuthenticationError, Sealer

_RAW = 0
_ZSTD = 1
_SAMPLE = 16 * 1024
_INCOMPRESSIBLE_RATIO = 0.92
# zstd picks its parameters by input size (tables for up to 16 KiB, 128 KiB, 256 KiB and more)
# and reallocates a context's tables when they grow, or when they stayed much bigger than
# needed for a while: one context per size class keeps trees and small files from making the
# next bigger input fault in fresh tables (~20k page faults in a 1 GiB first backup).
_SMALL_INPUT = 16 * 1024
_BIG_INPUT = 256 * 1024
# zstd's fast and dfast strategies (its levels up to 3, and 4 for inputs over 256 KiB) look up
# every position in a hash table and a chain table; for inputs over 256 KiB, level 3 makes
# them 768 KiB, and most lookups miss the core's L2 cache. Capped at 2^15 and 2^14 entries
# (192 KiB), the benchmark set's compressible files compress 4-12 % faster in a loop, and
# 0.1 MB smaller (docs/benchmarks.md). The slower strategies of higher levels keep zstd's
# own tables: their cost is the search, and their tables are what buys their ratio.
_HASH_LOG_CAP = 15
_CHAIN_LOG_CAP = 14


# What a blob's stored form seals: the flag byte (head), then the plaintext, compressed or
# not (body). A plain tuple: a NamedTuple cost ~1.5 us more per blob.
Payload = tuple[bytes, bytes | memoryview]
_RAW_HEAD = bytes((_RAW,))
_ZSTD_HEAD = bytes((_ZSTD,))


def _compressor(level: int, source_size: int) -> zstandard.ZstdCompressor:
    """A compressor at level for inputs up to source_size (0: any size), tables capped for speed."""
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=source_size)
    if params.strategy <= zstandard.STRATEGY_DFAST:
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=source_size,
            hash_log=min(params.hash_log, _HASH_LOG_CAP),
            chain_log=min(params.chain_log, _CHAIN_LOG_CAP),
        )
    return zstandard.ZstdCompressor(compression_params=params)


class BlobType(enum.IntEnum):
    """What a blob holds."""

    DATA = 0
    TREE = 1


_DATA = BlobType.DATA


class BlobCodec:
    """Turns plaintext into stored bytes and back; safe to share between threads."""

    def __init__(self, sealer: Sealer, chunk_id_key: bytes, compression_level: int) -> None:
        self._sealer = sealer
        self._id_key = chunk_id_key
        # a tree and a file with the same bytes must not share an id, or one would shadow the other
        self._tree_key = blake3.blake3(chunk_id_key, derive_key_context="backvault 2026 tree id").digest()
        self._level = compression_level
        self._local = threading.local()

    def blob_id(self, blob_type: BlobType, plaintext: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of the plaintext: the blob's 32-byte id (trees use a separate key)."""
        key = self._id_key if blob_type == _DATA else self._tree_key
        return blake3.blake3(plaintext, key=key).digest()

    def _compressors(self) -> tuple[zstandard.ZstdCompressor, ...]:
        """This thread's compressors, one per input size class (see _SMALL_INPUT)."""
        compressors: tuple[zstandard.ZstdCompressor, ...] | None = getattr(self._local, "compressors", None)
        if compressors is None:
            compressors = tuple(
                _compressor(self._level, source_size) for source_size in (_SMALL_INPUT, _BIG_INPUT, 0)
            )
            self._local.compressors = compressors
            self._local.probe = zstandard.ZstdCompressor(level=1)
        return compressors

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        # Creating one costs ~13 us, ten times the decompression of a small tree or file.
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def _compressible(self, plaintext: bytes | memoryview) -> bool:
        """Cheap test on a sample (of big inputs) so that media files are not compressed in vain."""
        self._compressors()
        middle = len(plaintext) // 2
        sample = plaintext[middle : middle + _SAMPLE]
        return len(self._local.probe.compress(sample)) < _INCOMPRESSIBLE_RATIO * len(sample)

    def payload(self, plaintext: bytes | memoryview) -> Payload:
        """What gets sealed: the flag byte, then the plaintext compressed (when it pays) or not."""
        size = len(plaintext)
        if size > 64 and (size <= 4 * _SAMPLE or self._compressible(plaintext)):
            compressors = self._compressors()
            compressor = compressors[0 if size <= _SMALL_INPUT else 1 if size <= _BIG_INPUT else 2]
            compressed = compressor.compress(plaintext)
            if len(compressed) < size:
                return _ZSTD_HEAD, compressed
        return _RAW_HEAD, plaintext

    def encode(self, blob_type: BlobType, blob_id: bytes, plaintext: bytes | memoryview) -> bytes:
        """Compress (when it pays) and seal plaintext."""
        head, body = self.payload(plaintext)
        return self._sealer.seal(head + body, bytes((blob_type,)) + blob_id)

    def seal_into(self, blob_type: BlobType, blob_id: bytes, payload: Payload, out: memoryview) -> int:
        """Write the stored form of payload (from payload()) at the start of out; returns its length."""
        head, body = payload
        return self._sealer.seal_into(body, bytes((blob_type,)) + blob_id, out, head)

    def decode(self, blob_type: BlobType, blob_id: bytes, stored: bytes | memoryview) -> bytes:
        """Open, decompress and verify a stored blob; raises ValueError describing the damage."""
        try:
            payload = self._sealer.open(stored, bytes((blob_type,)) + blob_id)
        except AuthenticationError as error:
            raise ValueError("blob failed authentication") from error
        flag = payload[0]
        if flag == _ZSTD:
            plaintext = self._decompressor().decompress(memoryview(payload)[1:])
        elif flag == _RAW:
            plaintext = payload[1:]
        else:
            raise ValueError(f"unknown blob encoding {flag}")
        if self.blob_id(blob_type, plaintext) != blob_id:
            raise ValueError("blob content does not match its id")
        return plaintext
