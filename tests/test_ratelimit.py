"""The per-user, per-tier sliding window (a controllable clock instead of sleeping)."""

from __future__ import annotations

import pytest

from s3seg.errors import RateLimited
from s3seg.server._ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_slides_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = RateLimiter({"free": 3, "pro": 5}, clock=clock)
    for _ in range(3):
        limiter.hit("a", "free")
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        limiter.hit("a", "free")
    assert refused.value.retry_after_s == 30  # the first hit (t=1000) leaves the window at t=1060; now is 1030
    assert "3 requests per minute for the free tier" in refused.value.message
    limiter.hit("b", "free")  # other users have their own window
    clock.now = 1060.0
    limiter.hit("a", "free")  # the first hit has left the window
    with pytest.raises(RateLimited):
        limiter.hit("a", "free")


def test_refused_requests_do_not_count_and_tiers_differ() -> None:
    clock = Clock()
    limiter = RateLimiter({"free": 1, "pro": 2}, clock=clock)
    limiter.hit("a", "free")
    for _ in range(5):
        with pytest.raises(RateLimited):
            limiter.hit("a", "free")
    clock.now += 60
    limiter.hit("a", "free")  # the refusals did not extend the window
    limiter.hit("p", "pro")
    limiter.hit("p", "pro")
    with pytest.raises(RateLimited):
        limiter.hit("p", "pro")
    assert limiter.limit("unknown-tier") == 1  # unknown tiers get the free limit
