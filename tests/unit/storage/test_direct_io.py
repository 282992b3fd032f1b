"""The memory direct I/O uses: page aligned, reused, and never shared with a forked child."""

from __future__ import annotations

import ctypes
import os

from backvault.repo.pack import PackBuilder
from backvault.storage.direct_io import ALIGNMENT, AlignedBuffer, align_down, align_up, private_memory


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_aligned_buffer_memory_is_aligned_and_kept_while_big_enough() -> None:
    buffer = AlignedBuffer()
    first = buffer.take(10_000)
    address = _address(first)
    assert address % ALIGNMENT == 0 and len(first) == 10_000
    first.release()
    again = buffer.take(5000)
    assert _address(again) == address  # the same pages again
    bigger = buffer.take(1 << 20)  # a bigger one while the old view is still held
    assert _address(bigger) % ALIGNMENT == 0 and len(bigger) == 1 << 20
    again[0] = 1  # the old memory stays valid until its views are gone
    for view in (again, bigger):
        view.release()


def test_alignment_rounds_to_whole_blocks() -> None:
    assert (align_down(0), align_up(0)) == (0, 0)
    assert (align_down(ALIGNMENT + 1), align_up(ALIGNMENT + 1)) == (ALIGNMENT, 2 * ALIGNMENT)
    assert (align_down(ALIGNMENT), align_up(ALIGNMENT)) == (ALIGNMENT, ALIGNMENT)


def test_private_memory_is_not_shared_with_a_forked_child() -> None:
    """A backup forks its workers after making its own pack builder: each must write its own."""
    memory = private_memory(ALIGNMENT)
    builder = PackBuilder()
    builder.buffer[:4] = b"mine"
    pid = os.fork()
    if pid == 0:  # the child scribbles over both, then leaves at once
        memory[:5] = b"child"
        builder.buffer[:4] = b"kids"
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert memory[:5] == bytes(5)
    assert builder.buffer[:4] == b"mine"
