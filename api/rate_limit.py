"""Per-tenant rate limit: a fixed window counted in Redis, shared by every API process.

A window is ``window_s`` seconds; each tenant's requests in it are one ``INCR`` on a key that
expires with the window. Past ``limit`` the request answers 429 with ``Retry-After`` = the
seconds left in the window. Redis down means no limit rather than no service: reads must go
on from Postgres, and submissions answer 503 on their own when they cannot be queued.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def hit(self, tenant: str, cost: int = 1) -> float | None:
        """Count ``cost`` units (a request, or a batch's items); None when allowed, else the
        seconds until the window ends."""
        ...


class NoRateLimit:
    def hit(self, tenant: str, cost: int = 1) -> float | None:
        return None


class RedisRateLimiter:
    def __init__(self, url: str, *, limit: int, window_s: int) -> None:
        import redis

        self.limit, self.window_s = limit, max(1, window_s)
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._warned_at = 0.0

    def hit(self, tenant: str, cost: int = 1) -> float | None:
        from redis.exceptions import RedisError

        now = time.time()
        window = int(now // self.window_s)
        key = f"ensemblehub:ratelimit:{tenant}:{window}"
        try:
            pipe = self._redis.pipeline()
            pipe.incrby(key, cost)
            pipe.expire(key, self.window_s * 2)
            count = int(pipe.execute()[0])
        except RedisError as exc:
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate limit off while Redis does not answer: %s", exc)
            return None
        if count <= self.limit:
            return None
        return max(1.0, math.ceil((window + 1) * self.window_s - now))


class InMemoryRateLimiter:
    """One process's fixed windows (embedded mode, where there is no Redis)."""

    def __init__(self, *, limit: int, window_s: int) -> None:
        self.limit, self.window_s = limit, max(1, window_s)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, tenant: str, cost: int = 1) -> float | None:
        now = time.time()
        window = int(now // self.window_s)
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] == window}
            count = self._counts[(tenant, window)] = self._counts.get((tenant, window), 0) + cost
        if count <= self.limit:
            return None
        return max(1.0, math.ceil((window + 1) * self.window_s - now))


def rate_limiter_for(broker_url: str, *, limit: int, window_s: int) -> RateLimiter:
    if limit <= 0:
        return NoRateLimit()
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisRateLimiter(broker_url, limit=limit, window_s=window_s)
    return InMemoryRateLimiter(limit=limit, window_s=window_s)
