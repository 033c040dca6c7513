"""SQLite connections and transactions shared by every store of the daemon.

Several worker processes share each database file, so connections use WAL and a busy
timeout, and writes that read-then-write take the write lock up front
(``BEGIN IMMEDIATE``). A failed ROLLBACK never hides the error that caused it
(``transaction``, ``rollback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from signer.errors import StorageUnavailable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000

P = ParamSpec("P")
T = TypeVar("T")

_NO_WAITING: contextvars.ContextVar[bool] = contextvars.ContextVar("no_waiting", default=False)


class WouldBlock(BaseException):
    """A store would have to wait for a lock: the stage is re-run off the event loop.

    A BaseException so that no ``except Exception`` on the way swallows it.
    """


def waiting_forbidden() -> bool:
    """True while a stage runs inline on the event loop, which must never wait."""
    return _NO_WAITING.get()


async def inline_or_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` inline if no store it touches has to wait, else in a thread.

    The fast path costs no thread hop; a stage that would wait on a busy database (another
    process holds its write lock) raises WouldBlock before changing anything and runs
    again in a thread, so the loop keeps serving (health, other requests) meanwhile.
    ``fn`` must be safe to re-run after WouldBlock (the stores raise it before writing).
    """
    token = _NO_WAITING.set(True)
    try:
        return fn(*args, **kwargs)
    except WouldBlock:
        pass
    finally:
        _NO_WAITING.reset(token)
    return await asyncio.to_thread(fn, *args, **kwargs)


def connect(
    path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """A connection tuned for several processes: WAL, a busy timeout, shared by threads.

    ``synchronous`` is NORMAL for state that the token or a client can rebuild, FULL for
    the audit log (no signature may leave before its entry would survive a power loss).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
        )
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
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


class Database:
    """One SQLite file used by one store: a lock, a waiting and a non-waiting connection.

    ``use()`` hands out the connection under the store's lock. Inline on the event loop
    (``inline_or_thread``) neither the lock nor SQLite may wait: a held lock or a busy
    database raises WouldBlock instead, and the stage runs again in a thread. Database
    errors become StorageUnavailable (UNAVAILABLE), saying when the disk is full.
    """

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._conn = connect(path, synchronous)
        self._nowait = connect(path, synchronous, busy_timeout_ms=0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        inline = waiting_forbidden()
        if inline:
            if not self._lock.acquire(blocking=False):
                raise WouldBlock
        else:
            self._lock.acquire()
        try:
            try:
                yield self._nowait if inline else self._conn
            except sqlite3.OperationalError as exc:
                if inline and _is_busy(exc):
                    raise WouldBlock from exc
                raise storage_error(self.path, exc) from exc
            except sqlite3.DatabaseError as exc:
                raise storage_error(self.path, exc) from exc
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._nowait.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN [IMMEDIATE] ... COMMIT``; on any error ROLLBACK and re-raise that error.

    The one place a store's transaction ends on an error (``rollback``): the caller
    always sees the error that made the transaction fail, never the ROLLBACK's.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")  # a failed COMMIT (disk full) leaves the transaction open
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection, attempts: int = 2) -> None:
    """End the transaction an error left open; never raises (the caller is raising).

    A ROLLBACK that fails (disk full, I/O error) is logged and tried once more: a
    transaction left open fails every later BEGIN on this connection. A connection that
    is gone (closed) has nothing left to roll back."""
    for attempt in range(1, attempts + 1):
        try:
            if not conn.in_transaction:  # raises too once the connection is closed
                return
            conn.execute("ROLLBACK")
            return
        except sqlite3.ProgrammingError as exc:  # closed: SQLite rolled back on close
            log.warning("no ROLLBACK possible after an error: %s", exc)
            return
        except sqlite3.Error as exc:
            log.warning("ROLLBACK failed after an error (attempt %d): %s", attempt, exc)


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
