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


class BlobType(enum.IntEnum):
    """What a blob holds."""

    DATA = 0
    TREE = 1


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
        key = self._id_key if blob_type == BlobType.DATA else self._tree_key
        return blake3.blake3(plaintext, key=key).digest()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self._level)
            self._local.compressor = compressor
            self._local.probe = zstandard.ZstdCompressor(level=1)
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        # Creating one costs ~13 us, ten times the decompression of a small tree or file.
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def _compressible(self, plaintext: bytes | memoryview) -> bool:
        """Cheap test on a sample so that media files are not compressed in vain."""
        if len(plaintext) <= 4 * _SAMPLE:
            return True
        self._compressor()
        middle = len(plaintext) // 2
        sample = plaintext[middle : middle + _SAMPLE]
        return len(self._local.probe.compress(sample)) < _INCOMPRESSIBLE_RATIO * len(sample)

    def payload(self, plaintext: bytes | memoryview) -> bytes:
        """What gets sealed: the flag byte, then the plaintext compressed (when it pays) or not."""
        if len(plaintext) > 64 and self._compressible(plaintext):
            compressed = self._compressor().compress(plaintext)
            if len(compressed) < len(plaintext):
                return bytes((_ZSTD,)) + compressed
        return bytes((_RAW,)) + plaintext  # one copy, also from a memoryview

    def encode(self, blob_type: BlobType, blob_id: bytes, plaintext: bytes | memoryview) -> bytes:
        """Compress (when it pays) and seal plaintext."""
        return self._sealer.seal(self.payload(plaintext), bytes((blob_type,)) + blob_id)

    def seal_into(self, blob_type: BlobType, blob_id: bytes, payload: bytes, out: memoryview) -> int:
        """Write the stored form of payload (from payload()) at the start of out; returns its length."""
        return self._sealer.seal_into(payload, bytes((blob_type,)) + blob_id, out)

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
