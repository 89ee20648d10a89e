"""Per-user rate limits by tier: a sliding one-minute window kept in this process.

Several server processes behind a load balancer each count on their own (a user gets up to N times the
limit with N processes); put the limit in the gateway in front of them when that matters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from s3seg.errors import RateLimited


class RateLimiter:
    """``limits`` maps a tier to requests per ``window_s``; tiers not listed use the ``free`` limit."""

    def __init__(
        self, limits: dict[str, int], window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = dict(limits)
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def limit(self, tier: str) -> int:
        return self.limits.get(tier, self.limits.get("free", 10))

    def hit(self, user_id: str, tier: str) -> None:
        """Count one request, or raise :class:`RateLimited` (nothing counted) when the window is full."""
        limit = self.limit(tier)
        now = self._clock()
        with self._lock:
            seen = self._seen.setdefault(user_id, deque())
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if len(seen) >= limit:
                wait = max(1, math.ceil(seen[0] + self.window_s - now))
                raise RateLimited(
                    f"rate limit reached: {limit} requests per minute for the {tier} tier",
                    f"retry in {wait} s",
                    retry_after_s=wait,
                )
            seen.append(now)
            if len(self._seen) > 10_000:  # forget idle users so the table cannot grow without bound
                for user in [u for u, q in self._seen.items() if not q or q[-1] <= now - self.window_s]:
                    del self._seen[user]
