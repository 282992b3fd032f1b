"""Writing big restored files around the page cache (O_DIRECT), their chunks arriving in any order.

Going through the page cache cost a restore of the 1 GiB benchmark set about a fifth of
its CPU (storage/direct_io.py says why). O_DIRECT writes whole aligned blocks, but chunks
are cut by content and start and end anywhere in a block: the aligned middle of a chunk
goes out at once, and the pieces at its two ends wait until the chunks beside them fill
their blocks. A block left incomplete when the file's last chunk is in was not written
because it is zeros (all-zero chunks are skipped): the missing bytes are zeros. The
file's last block, when shorter than the others, goes through the page cache. All-zero
blocks are never written, so sparse files stay sparse.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from backvault.storage import direct_io
from backvault.storage.direct_io import ALIGNMENT, AlignedBuffer, align_down, align_up

# Smaller files go through the page cache: a direct write waits for the disk, and most of
# a small file is its two partial blocks anyway.
DIRECT_FILE_MIN = 1024 * 1024

Ranges = Callable[[bytes, int], list[tuple[int, int]]]  # restore_write.data_ranges


class DirectWrites:
    """One process's direct writing: its aligned memory, and whether the target takes O_DIRECT."""

    def __init__(self) -> None:
        self.buffer = AlignedBuffer()
        self.enabled = bool(direct_io.O_DIRECT)

    def wanted(self, size: int) -> bool:
        """Tell whether a file of size bytes is to be written direct."""
        return self.enabled and size >= DIRECT_FILE_MIN


class DirectFile:
    """The blocks of one file that chunks have filled only in part so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pieces: dict[int, list[tuple[int, bytes]]] = {}  # block start -> (offset, bytes)
        self._filled: dict[int, int] = {}  # block start -> bytes received

    def write(
        self, fd: int, offset: int, data: bytes, ranges: Ranges, buffer: AlignedBuffer
    ) -> tuple[int, int]:
        """Write what data (at offset) completes; returns (bytes written, end of the last written).

        ranges tells which parts of data are not zero blocks. OSError as from os.pwrite:
        when direct_io.refused(error), write the rest buffered after spill().
        """
        end = offset + len(data)
        middle_start, middle_end = align_up(offset), align_down(end)
        if middle_start >= middle_end:  # no whole block inside: pieces only
            middle_start = middle_end = end
        count = last = 0
        view = memoryview(data)
        for start, stop in ranges(data, offset):
            start, stop = max(start, middle_start - offset), min(stop, middle_end - offset)
            if start < stop:
                _pwrite_direct(fd, view[start:stop], offset + start, buffer)
                count += stop - start
                last = offset + stop
        for start, stop in ((offset, middle_start), (middle_end, end)):
            while start < stop:  # a piece never spans two blocks
                piece_end = min(stop, align_down(start) + ALIGNMENT)
                written, block_end = self._add(fd, start, data[start - offset : piece_end - offset], buffer)
                count, last = count + written, max(last, block_end)
                start = piece_end
        return count, last

    def _block_length(self, block: int) -> int:
        return min(ALIGNMENT, self.size - block)

    def _add(self, fd: int, offset: int, piece: bytes, buffer: AlignedBuffer) -> tuple[int, int]:
        """Keep a piece of a block; write the block once complete: (bytes written, its end)."""
        block = align_down(offset)
        self._pieces.setdefault(block, []).append((offset, piece))
        filled = self._filled[block] = self._filled.get(block, 0) + len(piece)
        if filled < self._block_length(block):
            return 0, 0
        return self._write_block(fd, block, buffer)

    def _write_block(self, fd: int, block: int, buffer: AlignedBuffer) -> tuple[int, int]:
        """Assemble a block from its pieces (zeros where none came) and write it unless all zero.

        Its pieces are let go only once it is written: after a refused write, spill() needs them.
        """
        content = bytearray(self._block_length(block))
        for offset, piece in self._pieces[block]:
            content[offset - block : offset - block + len(piece)] = piece
        written = any(content)
        if written and len(content) == ALIGNMENT:
            _pwrite_direct(fd, memoryview(content), block, buffer)
        elif written:  # the file's short last block: O_DIRECT cannot write it
            direct_io.set_direct(fd, False)
            _pwrite_all(fd, memoryview(content), block)
            direct_io.set_direct(fd, True)
        del self._pieces[block], self._filled[block]
        return (len(content), block + len(content)) if written else (0, 0)

    def finish(self, fd: int, buffer: AlignedBuffer) -> tuple[int, int]:
        """Write every block still incomplete (the rest of it is zeros): (bytes written, last end)."""
        count = last = 0
        for block in sorted(self._pieces):
            written, end = self._write_block(fd, block, buffer)
            count, last = count + written, max(last, end)
        return count, last

    def spill(self, fd: int) -> None:
        """Write every piece kept so far through the page cache (fd no longer direct)."""
        direct_io.set_direct(fd, False)
        for pieces in self._pieces.values():
            for offset, piece in pieces:
                _pwrite_all(fd, memoryview(piece), offset)
        self._pieces.clear()
        self._filled.clear()


def _pwrite_direct(fd: int, data: memoryview, offset: int, buffer: AlignedBuffer) -> None:
    """Write whole aligned blocks at an aligned offset, from a copy in aligned memory."""
    staged = buffer.take(len(data))
    try:
        staged[:] = data
        _pwrite_all(fd, staged, offset)
    finally:
        staged.release()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
