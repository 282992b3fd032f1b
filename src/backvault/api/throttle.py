"""Request limits: a token bucket per access key, and the largest request body accepted.

Each key's bucket holds up to ``burst`` tokens and refills at ``rate_per_second``; a request takes
one token or is refused with AWS's ThrottlingException, sent as HTTP 429 so SDKs back off and retry.
The buckets live in the server process: with several API servers, each enforces the rate itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

from backvault.domain.errors import LimitExceededException, ThrottlingException

# AWS Backup's largest documents (plans, policies, templates) are far below this.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
# Past this many tracked keys, buckets that have refilled completely are forgotten (they hold no state).
_PRUNE_THRESHOLD = 10_000


class RequestThrottled(ThrottlingException):
    """ThrottlingException with HTTP 429 on the wire (the code boto3 reads stays ThrottlingException)."""

    http_status: ClassVar[int] = 429


class RequestTooLarge(LimitExceededException):
    """The request body exceeds MAX_REQUEST_BODY_BYTES (HTTP 413)."""

    http_status: ClassVar[int] = 413


class Throttle:
    """Token buckets by access key id; thread-safe."""

    def __init__(
        self, rate_per_second: float = 20, burst: int = 40, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError(
                f"throttle needs a positive rate and a burst of at least 1, got {rate_per_second}/{burst}"
            )
        self.rate_per_second = float(rate_per_second)
        self.burst = int(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of that count)
        self._lock = threading.Lock()

    def check(self, access_key_id: str) -> None:
        """Take one token from the key's bucket, or raise ThrottlingException (HTTP 429)."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(access_key_id, now)
            if tokens < 1.0:
                self._buckets[access_key_id] = (tokens, now)
                wait = (1.0 - tokens) / self.rate_per_second
                raise RequestThrottled(
                    f"Rate exceeded for access key {access_key_id}: at most {self.rate_per_second:g} "
                    f"requests per second (bursts of {self.burst}); retry in {wait:.2f} s."
                )
            self._buckets[access_key_id] = (tokens - 1.0, now)
            if len(self._buckets) > _PRUNE_THRESHOLD:
                self._forget_full_buckets(now)

    def _tokens(self, access_key_id: str, now: float) -> float:
        state = self._buckets.get(access_key_id)
        if state is None:
            return float(self.burst)
        tokens, then = state
        # A clock that goes back (it should not) refills nothing rather than going negative.
        return min(float(self.burst), tokens + max(0.0, now - then) * self.rate_per_second)

    def _forget_full_buckets(self, now: float) -> None:
        full = [key for key in self._buckets if self._tokens(key, now) >= self.burst]
        for key in full:
            del self._buckets[key]


def check_request_size(size: int | None, limit: int = MAX_REQUEST_BODY_BYTES) -> None:
    """Refuse a request body (by Content-Length or bytes read) larger than ``limit``, with HTTP 413."""
    if size is not None and size > limit:
        raise RequestTooLarge(
            f"The request body is {size} bytes; the limit is {limit} bytes. Send smaller documents."
        )
