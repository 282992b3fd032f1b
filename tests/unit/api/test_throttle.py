"""The per-key token bucket and the request size limit."""

from __future__ import annotations

import threading

import pytest

from backvault.api.throttle import MAX_REQUEST_BODY_BYTES, Throttle, check_request_size
from backvault.domain.errors import LimitExceededException, ThrottlingException


class ManualClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def take(throttle: Throttle, key: str, count: int) -> int:
    """Try ``count`` requests; return how many passed."""
    passed = 0
    for _ in range(count):
        try:
            throttle.check(key)
        except ThrottlingException:
            continue
        passed += 1
    return passed


def test_burst_then_refill_at_the_rate() -> None:
    clock = ManualClock()
    throttle = Throttle(rate_per_second=10, burst=5, clock=clock)
    assert take(throttle, "A", 8) == 5
    with pytest.raises(ThrottlingException) as caught:
        throttle.check("A")
    assert caught.value.code == "ThrottlingException"
    assert caught.value.http_status == 429
    assert "at most 10 requests per second" in caught.value.message
    clock.now += 0.25  # 2.5 tokens
    assert take(throttle, "A", 5) == 2
    clock.now += 60  # refills to the burst, never beyond
    assert take(throttle, "A", 10) == 5


def test_keys_have_their_own_buckets() -> None:
    clock = ManualClock()
    throttle = Throttle(rate_per_second=1, burst=2, clock=clock)
    assert take(throttle, "A", 3) == 2
    assert take(throttle, "B", 3) == 2


def test_refused_requests_do_not_consume_tokens() -> None:
    clock = ManualClock()
    throttle = Throttle(rate_per_second=1, burst=1, clock=clock)
    assert take(throttle, "A", 1) == 1
    assert take(throttle, "A", 100) == 0  # hammering while throttled...
    clock.now += 1.0
    assert take(throttle, "A", 1) == 1  # ...does not delay recovery


def test_a_clock_going_back_refills_nothing() -> None:
    clock = ManualClock()
    throttle = Throttle(rate_per_second=1, burst=1, clock=clock)
    assert take(throttle, "A", 1) == 1
    clock.now -= 100
    assert take(throttle, "A", 1) == 0


def test_concurrent_checks_never_exceed_the_burst() -> None:
    throttle = Throttle(rate_per_second=0.001, burst=50)
    passed: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        passed.append(take(throttle, "A", 20))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(passed) == 50


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        Throttle(rate_per_second=0)
    with pytest.raises(ValueError, match="burst of at least 1"):
        Throttle(burst=0)


def test_request_size_limit() -> None:
    check_request_size(None)
    check_request_size(MAX_REQUEST_BODY_BYTES)
    with pytest.raises(LimitExceededException, match="limit is 1048576 bytes") as caught:
        check_request_size(MAX_REQUEST_BODY_BYTES + 1)
    assert caught.value.http_status == 413
