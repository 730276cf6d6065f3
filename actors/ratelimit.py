"""Per-key token buckets: a sustained rate with a burst allowance, and the wait until
the next token for the Retry-After header.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.rate, self.burst, self._clock, self.max_keys = rate_per_s, burst, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, rate_per_s: float | None = None, burst: int | None = None) -> float:
        """Take one token; returns 0.0 when allowed, else the seconds until one is free.
        ``rate_per_s``/``burst`` override the defaults for keys with their own limit."""
        rate, capacity = rate_per_s or self.rate, burst or self.burst
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(capacity), now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1:
                self._store(key, tokens - 1, now)
                return 0.0
            self._store(key, tokens, now)
            return (1 - tokens) / rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            # Full buckets carry no state worth keeping; dropping one only forgives a burst.
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens, now)
