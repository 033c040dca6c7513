"""A connection pool and the one way to run a transaction on it, failing closed.

A database that cannot be reached (down, restarted, the network gone) raises
StorageUnavailable (UNAVAILABLE): nothing is signed. The pool checks each connection
before handing it out, so after a restart the next request reconnects: nothing to
restart. Inline on the event loop every query would wait on the network, so a store
raises WouldBlock there and the stage runs in a thread (``inline_or_thread``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors

from signer.errors import StorageUnavailable
from signer.storage.sqlite import WouldBlock, waiting_forbidden

log = logging.getLogger(__name__)

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0
# Serialization failures and deadlocks are the database asking us to try again.
_RETRY = (errors.SerializationFailure, errors.DeadlockDetected)


class Database:
    """A pool of connections to ``url`` (the password passed apart, never in the URL)."""

    def __init__(self, url: str, password: str | None = None, max_size: int = 8) -> None:
        self.url = url
        self.password = password
        self.where = _shown(url)
        self._healthy = True
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)}
        if password is not None:
            kwargs["password"] = password
        self.kwargs = kwargs
        self.pool = psycopg_pool.ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=CONNECT_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,
            name="signer-state",
        )
        self.pool.open(wait=False)

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (LISTEN, long locks)."""
        return psycopg.connect(self.url, **self.kwargs)

    def run(self, work: Callable[[psycopg.Connection[Any]], T], transaction: bool = True) -> T:
        """``work(conn)`` in one transaction (retried on a serialization failure)."""
        if waiting_forbidden():
            raise WouldBlock
        for attempt in range(5):
            try:
                with self.pool.connection() as conn:
                    if transaction:
                        with conn.transaction():
                            result = work(conn)
                    else:
                        result = work(conn)
                self._set_healthy(True)
                return result
            except _RETRY:
                if attempt == 4:
                    raise StorageUnavailable(
                        f"state database {self.where} is busy (serialization conflicts)"
                    ) from None
                time.sleep(0.01 * (attempt + 1))
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                self._set_healthy(False)
                raise StorageUnavailable(
                    f"state database {self.where} is unavailable: {_first_line(exc)}"
                ) from exc
            except (psycopg.InterfaceError, psycopg.errors.AdminShutdown) as exc:
                self._set_healthy(False)
                raise StorageUnavailable(
                    f"state database {self.where} is unavailable: {_first_line(exc)}"
                ) from exc
        raise AssertionError("unreachable")

    def _set_healthy(self, healthy: bool) -> None:
        if healthy != self._healthy:
            with self._lock:
                if healthy != self._healthy:
                    self._healthy = healthy
                    if healthy:
                        log.info("state database %s reachable again", self.where)
                    else:
                        log.error("state database %s unreachable", self.where)

    def healthy(self) -> bool:
        """False after a failure until a query succeeds again (probed here if needed)."""
        if not self._healthy:
            try:
                self.run(lambda conn: conn.execute("SELECT 1").fetchone(), transaction=False)
            except StorageUnavailable:
                return False
        return self._healthy

    def close(self) -> None:
        self.pool.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _shown(url: str) -> str:
    """The URL as messages show it: never a password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))
