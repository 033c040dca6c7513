"""SQLite connections and transactions shared by every store of the daemon.

Several worker processes share each database file, so connections use WAL and a busy
timeout, and writes that read-then-write take the write lock up front
(``BEGIN IMMEDIATE``). A failed ROLLBACK never hides the error that caused it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from signer.errors import StorageUnavailable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000


def connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection tuned for several processes: WAL, a busy timeout, shared by threads.

    ``synchronous`` is NORMAL for state that the token or a client can rebuild, FULL for
    the audit log (no signature may leave before its entry would survive a power loss).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Switching a new file to WAL can fail at once with "database is locked" (no busy
        # handler there) when another worker process opens it at the same moment: retry.
        for attempt in range(100):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.DatabaseError as exc:
        raise StorageUnavailable(f"cannot open state database {path}: {exc}") from exc
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN [IMMEDIATE] ... COMMIT``; on any error ROLLBACK and re-raise that error.

    A ROLLBACK that fails itself (the connection is gone, the disk vanished) is logged and
    swallowed, so the caller sees the error that made the transaction fail.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:
            log.warning("ROLLBACK failed after an error: %s", rollback_error)
        raise
    conn.execute("COMMIT")


def is_disk_full(exc: BaseException) -> bool:
    """True when SQLite (or the OS) refused a write for lack of space."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return False


def storage_error(path: Path | str, exc: sqlite3.Error | OSError) -> StorageUnavailable:
    """The error a caller sees when state cannot be read or written: UNAVAILABLE, named."""
    if is_disk_full(exc):
        return StorageUnavailable(f"the disk holding {path} is full; free space and retry")
    return StorageUnavailable(f"state database {os.fspath(path)} is unavailable: {exc}")
