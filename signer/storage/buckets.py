"""Token-bucket levels for the rate limiter: in memory, or shared by a host's workers.

A bucket is a level and the time it was last written; ``take`` refills it at ``rate``
per second up to ``burst``, then spends ``n`` tokens or says how long to wait. The
bucket does not remember its limit: when a reload changes a principal's limit, the level
carries over (capped at the new burst), so neither a reload nor two workers briefly
holding different policies can refill anyone's bucket.

The shared stores (``signer.storage.sqlite.buckets.SqliteBuckets`` for a host's
workers, the PostgreSQL one for replicas) take in one transaction each (read, refill,
take or refuse, write); their clock is the wall clock, shared by all processes and
meaningful after a restart; a clock that steps back refills nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from signer.storage.tokenbucket import refill, wait


class MemoryBuckets:
    """Buckets of one process (tests, tools, and a policy loaded without a store)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._levels: dict[str, tuple[float, float]] = {}  # name -> (level, stamp)

    def take(self, name: str, rate: float, burst: float, n: float) -> float:
        with self._lock:
            now = self._clock()
            old = self._levels.get(name)
            level = burst if old is None else refill(old[0], old[1], now, rate, burst)
            if level < n:
                return wait(level, n, rate)
            self._levels[name] = (level - n, now)
            return 0.0

    def absorb(self, other: MemoryBuckets) -> None:
        """Take over ``other``'s levels (a reloaded policy keeps the buckets)."""
        with other._lock:
            levels = dict(other._levels)
        with self._lock:
            self._levels.update(levels)

    def close(self) -> None:
        return None
