"""Golden vectors: the cut points must never change silently, or dedup across versions breaks."""

from __future__ import annotations

import io
import random

from backvault.repo.chunker import cut_points, make_chunker
from backvault.repo.config import ChunkerParams

GOLDEN_SEED_0 = [
    682206, 1272349, 2312905, 2848837, 3839776, 4480408, 5097799, 5999001, 6749088, 7941444,
    9059467, 9607027, 10820057, 11563722, 12113090, 12969495, 13796903, 14497344, 15418760,
    16275224, 16981596, 17546503, 18276020, 18930298, 19842657, 20544783, 21701668, 22310604,
    22864846, 24473625, 25165824,
]  # fmt: skip
GOLDEN_SEED_C0FFEE = [
    621679, 1228272, 1800362, 2423247, 3255170, 4075207, 4994741, 5580483, 6347200, 6950813,
    7831460, 8408537, 9080258, 9608080, 10434644, 11385841, 11949011, 12742538, 13384279,
    13990845, 14693365, 15368425, 16168271, 16781765, 17623954, 19218046, 19855554, 20588656,
    21148763, 21692077, 22699822, 23240590, 23873092, 24754617, 25165824,
]  # fmt: skip


def golden_input() -> bytes:
    """24 MiB of reproducible pseudo-random bytes."""
    return random.Random(20261121).randbytes(24 << 20)


def test_default_parameters_are_the_documented_ones() -> None:
    params = ChunkerParams()
    assert (params.min_size, params.avg_size, params.max_size, params.normalization) == (
        512 * 1024,
        512 * 1024,
        8 * 1024 * 1024,
        1,
    )


def test_cut_points_are_pinned_for_seed_zero() -> None:
    assert cut_points(ChunkerParams(seed=0), golden_input()) == GOLDEN_SEED_0


def test_cut_points_are_pinned_for_a_repository_seed() -> None:
    assert cut_points(ChunkerParams(seed=0xC0FFEE), golden_input()) == GOLDEN_SEED_C0FFEE


def test_streaming_cuts_equal_buffer_cuts() -> None:
    """The writer chunks streams; the result must equal whole-buffer chunking."""
    data = golden_input()
    chunker = make_chunker(ChunkerParams(seed=0xC0FFEE))
    ends = [chunk.offset + chunk.length for chunk in chunker.cut_stream(io.BytesIO(data))]
    assert ends == GOLDEN_SEED_C0FFEE


def test_insertion_only_changes_nearby_chunks() -> None:
    """Content-defined: inserting bytes early keeps most later chunks."""
    data = golden_input()
    params = ChunkerParams(seed=0)
    before = {data[a:b] for a, b in zip([0, *GOLDEN_SEED_0], GOLDEN_SEED_0, strict=False)}
    shifted = data[:1000] + b"inserted" + data[1000:]
    ends = cut_points(params, shifted)
    after = {shifted[a:b] for a, b in zip([0, *ends], ends, strict=False)}
    assert len(before & after) >= len(before) - 2
