"""Per-key token buckets: a sustained rate with a burst allowance, and the wait until the next
token for the Retry-After header; held in one place for every ingress replica, spent in leases.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.rate, self.burst, self._clock, self.max_keys = rate_per_s, burst, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, rate_per_s: float | None = None, burst: int | None = None) -> float:
        """Take one token; returns 0.0 when allowed, else the seconds until one is free.
        ``rate_per_s``/``burst`` override the defaults for keys with their own limit."""
        granted, wait_s = self.take(key, 1, rate_per_s, burst)
        return 0.0 if granted else wait_s

    def take(self, key: str, want: int, rate_per_s: float | None = None, burst: int | None = None) -> tuple[int, float]:
        """Take up to ``want`` whole tokens: (how many were taken, and if none, the seconds until one is free)."""
        rate, capacity = rate_per_s or self.rate, burst or self.burst
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(capacity), now))
            tokens = min(capacity, tokens + (now - last) * rate)
            granted = min(want, math.floor(tokens))
            self._store(key, tokens - granted, now)
            return granted, 0.0 if granted else (1 - tokens) / rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            # Full buckets carry no state worth keeping; dropping one only forgives a burst.
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens, now)


Take = Callable[[str, int, float, int], Awaitable[tuple[int, float]]]


class LeasedLimiter:
    """A key's limit held across every ingress replica. The tokens live in one shared bucket
    (``take``: the limits actor's RateLimiter); a replica takes them in leases of ``lease_s`` of
    the key's rate and spends them locally, so the shared bucket is asked once per lease, not
    per request. Nothing beyond the shared bucket is admitted; a lease unspent after
    ``lease_ttl_s`` lapses, erring towards refusal. When the shared bucket cannot be reached the
    replica uses a bucket of its own, so a restart of the limits actor never stops traffic.
    """

    def __init__(self, take: Take, fallback: RateLimiter, *, lease_s: float = 0.1, lease_ttl_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._take, self.fallback, self.lease_s, self.lease_ttl_s = take, fallback, lease_s, lease_ttl_s
        self._clock, self.max_keys = clock, max_keys
        self._leases: dict[str, tuple[int, float]] = {}

    async def acquire(self, key: str, rate_per_s: float | None = None, burst: int | None = None) -> float:
        """0.0 when the request may go, else the seconds until a token is free. ``rate_per_s``/
        ``burst`` override the fallback's defaults for keys with their own limit."""
        rate_per_s, burst = rate_per_s or self.fallback.rate, burst or self.fallback.burst
        now = self._clock()
        tokens, lapses = self._leases.get(key, (0, 0.0))
        if tokens > 0 and now < lapses:
            self._leases[key] = (tokens - 1, lapses)
            return 0.0
        want = max(1, min(burst, math.ceil(rate_per_s * self.lease_s)))
        try:
            granted, wait_s = await self._take(key, want, rate_per_s, burst)
        except Exception as error:  # the limits actor is restarting: limit this replica alone meanwhile
            logger.warning("shared rate limits unreachable (%s); limiting this replica's share alone", error)
            return self.fallback.acquire(key, rate_per_s, burst)
        if not granted:
            return wait_s
        if key not in self._leases and len(self._leases) >= self.max_keys:
            self._leases.pop(next(iter(self._leases)))
        self._leases[key] = (granted - 1, self._clock() + self.lease_ttl_s)
        return 0.0
