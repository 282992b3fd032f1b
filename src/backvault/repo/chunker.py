"""Content-defined chunking with FastCDC (compiled pyfastcdc); parameters come from the repo config."""

from __future__ import annotations

from typing import Any

from pyfastcdc.cy import FastCDC

from backvault.repo.config import ChunkerParams


def make_chunker(params: ChunkerParams) -> Any:
    """A FastCDC chunker for these parameters (one per thread: it is not thread-safe)."""
    return FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=params.normalization,
        seed=params.seed,
    )


def cut_points(params: ChunkerParams, data: bytes) -> list[int]:
    """End offsets of the chunks data is cut into (pinned by the golden-vector test)."""
    return [chunk.offset + chunk.length for chunk in make_chunker(params).cut_buf(data)]
