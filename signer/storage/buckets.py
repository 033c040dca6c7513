"""Token-bucket levels for the rate limiter: in memory, or shared by a host's workers.

A bucket is a level and the time it was last written; ``take`` refills it at ``rate``
per second up to ``burst``, then spends ``n`` tokens or says how long to wait. The
bucket does not remember its limit: when a reload changes a principal's limit, the level
carries over (capped at the new burst), so neither a reload nor two workers briefly
holding different policies can refill anyone's bucket.

``SqliteBuckets`` keeps the buckets in one SQLite file (``ratelimit.db`` in the state
dir) shared by the worker processes: one short ``BEGIN IMMEDIATE`` transaction per take
(read, refill, take or refuse, write). ``synchronous=OFF``: losing the last levels in a
power cut only refills some buckets. Its clock is the wall clock, shared by all
processes and meaningful after a restart; a clock that steps back refills nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from signer.storage.sqlite import Database, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    level REAL NOT NULL,
    stamp REAL NOT NULL
) WITHOUT ROWID
"""


class Buckets(Protocol):
    def take(self, name: str, rate: float, burst: float, n: float) -> float:
        """Spend ``n`` tokens of ``name``'s bucket and return 0.0, or spend nothing and
        return the seconds until ``n`` tokens will be there."""
        ...

    def close(self) -> None: ...


def refill(level: float, stamp: float, now: float, rate: float, burst: float) -> float:
    """The level of a bucket written at ``stamp`` with ``level``, at ``now``."""
    return min(burst, level + max(0.0, now - stamp) * rate)


def _wait(level: float, n: float, rate: float) -> float:
    return (n - level) / rate if rate > 0 else float("inf")


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
                return _wait(level, n, rate)
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


class SqliteBuckets:
    """Buckets in ``path`` (SQLite, WAL), shared by every process that opens the file.

    Inline on the event loop (``signer.storage.sqlite.inline_or_thread``) a take that
    would wait for another process's write lock raises WouldBlock before changing
    anything; in a thread it waits (busy timeout).
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._db = Database(path, synchronous="OFF")
        with self._db.use() as conn:
            conn.execute(_SCHEMA)

    def take(self, name: str, rate: float, burst: float, n: float) -> float:
        with self._db.use() as conn:
            try:
                return self._take(conn, name, rate, burst, n)
            except sqlite3.Error:
                if conn.in_transaction:  # a failed COMMIT can leave it open
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    def _take(
        self, conn: sqlite3.Connection, name: str, rate: float, burst: float, n: float
    ) -> float:
        with transaction(conn):
            row = conn.execute(
                "SELECT level, stamp FROM buckets WHERE name = ?", (name,)
            ).fetchone()
            now = self._clock()  # under the write lock: stamps are written in time order
            if row is None:
                level = burst
            else:
                level = refill(float(row[0]), float(row[1]), now, rate, burst)
                now = max(now, float(row[1]))  # a clock stepping back refills nothing
            if level < n:
                return _wait(level, n, rate)  # nothing written
            conn.execute(
                "INSERT INTO buckets (name, level, stamp) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET level = excluded.level, stamp = excluded.stamp",
                (name, level - n, now),
            )
            return 0.0

    def close(self) -> None:
        self._db.close()
