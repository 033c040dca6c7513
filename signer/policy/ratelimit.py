"""Per-principal rate limits: one token bucket per principal, refilled continuously.

The policy file names who gets which limit (a principal, ``group:NAME`` or ``*``); each
principal then has a bucket of its own, so one noisy member of a group cannot starve the
others. Buckets live in the worker process: with N workers a client may get up to N
times its rate (the kernel spreads connections over the workers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from signer.errors import ResourceExhausted


@dataclass(frozen=True)
class Limit:
    rate: float  # requests (signatures) per second, sustained
    burst: float  # bucket size: how many may come at once


class _Bucket:
    __slots__ = ("level", "limit", "stamp")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.level = limit.burst
        self.stamp = now


class RateLimiter:
    """``take(name, n)`` spends n tokens or raises ResourceExhausted saying when to retry."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        select: Callable[[str], Limit | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = dict(limits)
        self._select = select
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, n: int = 1) -> None:
        limit = self._select(name)
        if limit is None:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(name)
            if bucket is None or bucket.limit != limit:
                bucket = self._buckets[name] = _Bucket(limit, now)
            bucket.level = min(limit.burst, bucket.level + (now - bucket.stamp) * limit.rate)
            bucket.stamp = now
            if n > limit.burst:
                raise ResourceExhausted(
                    f"rate limit for {name}: {n} signatures in one request exceed the burst "
                    f"of {limit.burst:g}; split the batch"
                )
            if bucket.level < n:
                wait = (n - bucket.level) / limit.rate if limit.rate > 0 else float("inf")
                raise ResourceExhausted(
                    f"rate limit for {name}: {limit.rate:g}/s, burst {limit.burst:g}; "
                    f"retry in {wait:.2f}s"
                )
            bucket.level -= n

    def adopt(self, old: RateLimiter | None) -> None:
        """Keep the fill level of buckets whose limit a reload left unchanged."""
        if old is None:
            return
        with old._lock:
            buckets = dict(old._buckets)
        with self._lock:
            for name, bucket in buckets.items():
                if self._select(name) == bucket.limit:
                    self._buckets[name] = bucket


def rate_limiter_of(policy: object) -> RateLimiter | None:
    limiter = getattr(policy, "rate_limiter", None)
    return limiter if isinstance(limiter, RateLimiter) else None
