"""Per-principal rate limits: one token bucket per principal, refilled continuously.

The policy file names who gets which limit (a principal, maybe with a source prefix as in
rules, ``group:NAME`` or ``*``); each principal then has a bucket of its own, keyed by
source and name, so one noisy member of a group cannot starve the others, and a CN
``admin`` cannot drain the bucket of the DNS SAN ``admin``. Where the buckets live is the
store's business (``signer.storage.buckets``): the daemon passes one SQLite store shared
by its worker processes, so a client gets its rate once per host however many workers
serve it; without a store, buckets live in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from signer.errors import ResourceExhausted
from signer.principal import Principal
from signer.storage.buckets import MemoryBuckets

if TYPE_CHECKING:
    from signer.storage.interfaces import Buckets


@dataclass(frozen=True)
class Limit:
    rate: float  # requests (signatures) per second, sustained
    burst: float  # bucket size: how many may come at once


class RateLimiter:
    """``take(principal, n)`` spends n tokens or raises ResourceExhausted saying when to retry.

    ``buckets`` holds the levels (default: a new in-memory store, for this limiter only).
    A store that cannot be used raises StorageUnavailable: signing fails closed.
    """

    def __init__(
        self,
        limits: Mapping[str, Limit],
        select: Callable[[Principal], Limit | None],
        buckets: Buckets | None = None,
    ) -> None:
        self.limits = dict(limits)
        self._select = select
        self.buckets: Buckets = buckets if buckets is not None else MemoryBuckets()

    def take(self, principal: Principal, n: int = 1) -> None:
        limit = self._select(principal)
        if limit is None:
            return
        name = principal.name
        if n > limit.burst:
            raise ResourceExhausted(
                f"rate limit for {name}: {n} signatures in one request exceed the burst "
                f"of {limit.burst:g}; split the batch",
                reason="BATCH_OVER_BURST",
                metadata={"burst": f"{limit.burst:g}"},
            )
        wait = self.buckets.take(bucket_key(principal), limit.rate, limit.burst, n)
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit for {name}: {limit.rate:g}/s, burst {limit.burst:g}; "
                f"retry in {wait:.2f}s",
                reason="RATE_LIMITED",
                retry_after=wait,
                metadata={"burst": f"{limit.burst:g}"},
            )

    def adopt(self, old: RateLimiter | None) -> None:
        """Keep the levels of ``old``'s buckets (a reload is no way to refill one's bucket).

        Nothing to do when both use the same store (the daemon's shared one); an in-memory
        store takes over the old one's levels.
        """
        if old is None or old.buckets is self.buckets:
            return
        if isinstance(self.buckets, MemoryBuckets) and isinstance(old.buckets, MemoryBuckets):
            self.buckets.absorb(old.buckets)


def bucket_key(principal: Principal) -> str:
    """``"dns:admin"``: the source is part of the key, so a CN ``admin`` never spends (or
    drains) the bucket of the DNS SAN ``admin``. A name holds no source of its own here:
    the key's first ``:`` always ends the source."""
    return f"{principal.source}:{principal.name}"


def rate_limiter_of(policy: object) -> RateLimiter | None:
    limiter = getattr(policy, "rate_limiter", None)
    return limiter if isinstance(limiter, RateLimiter) else None
