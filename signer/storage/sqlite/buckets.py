"""Rate-limit buckets in one SQLite file (``ratelimit.db``) shared by a host's workers.

One short ``BEGIN IMMEDIATE`` transaction per take (read, refill, take or refuse,
write). ``synchronous=OFF``: losing the last levels in a power cut only refills some
buckets.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from signer.storage.sqlite import Database, transaction
from signer.storage.tokenbucket import refill, wait

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    level REAL NOT NULL,
    stamp REAL NOT NULL
) WITHOUT ROWID
"""


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
            return self._take(conn, name, rate, burst, n)

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
                return wait(level, n, rate)  # nothing written
            conn.execute(
                "INSERT INTO buckets (name, level, stamp) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET level = excluded.level, stamp = excluded.stamp",
                (name, level - n, now),
            )
            return 0.0

    def close(self) -> None:
        self._db.close()
