"""Token-bucket arithmetic, shared by every bucket store."""

from __future__ import annotations


def refill(level: float, stamp: float, now: float, rate: float, burst: float) -> float:
    """The level of a bucket written at ``stamp`` with ``level``, at ``now``."""
    return min(burst, level + max(0.0, now - stamp) * rate)


def wait(level: float, n: float, rate: float) -> float:
    return (n - level) / rate if rate > 0 else float("inf")
