"""A connection pool and the one way to run a transaction on it, failing closed.

A database that cannot be reached (down, restarted, the network gone) raises
StorageUnavailable (UNAVAILABLE): nothing is signed. The pool checks a connection that
has been idle for ``IDLE_CHECK_SECONDS`` before handing it out (one round trip; a
connection in steady use is not checked, which would double the round trips of a claim),
and after an outage the pool is renewed: the next request reconnects, nothing to
restart. ``healthy`` probes the database on a connection of its own (the daemon's state
watcher asks twice a second), so health says NOT_SERVING within a second of an outage
even when no request comes; while the probe fails, requests wait for a connection only
``OUTAGE_TIMEOUT`` seconds before answering UNAVAILABLE. Inline on the event loop every
query would wait on the network, so a store raises WouldBlock there and the stage runs
in a thread (``inline_or_thread``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from signer.errors import StorageUnavailable
from signer.storage.sqlite import WouldBlock, waiting_forbidden

log = logging.getLogger(__name__)

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0
OUTAGE_TIMEOUT = 1.0  # the wait for a pooled connection while the probe fails
IDLE_CHECK_SECONDS = 1.0  # a pooled connection unused this long is checked before use
# Serialization failures and deadlocks are the database asking us to try again.
_RETRY = (errors.SerializationFailure, errors.DeadlockDetected)


def durable_options(url: str) -> str:
    """The connection's ``options`` with ``synchronous_commit=on`` added: a COMMIT returns
    only once durable, whatever the database or role defaults say (a DBA's ``ALTER
    DATABASE ... SET synchronous_commit = off`` must not make audit entries losable). Set
    at connect, it costs no round trip; the TUF version claims turn it off per transaction
    (``SET LOCAL``), as the audit commit that must follow flushes the WAL past them."""
    existing = str(conninfo_to_dict(url).get("options") or "")
    return f"{existing} -c synchronous_commit=on".strip()


class Database:
    """A pool of connections to ``url`` (the password passed apart, never in the URL)."""

    def __init__(self, url: str, password: str | None = None, max_size: int = 8) -> None:
        self.url = url
        self.password = password
        self.where = _shown(url)
        self._healthy = True
        self._lock = threading.Lock()
        self._probe: psycopg.Connection[Any] | None = None
        self._probe_lock = threading.Lock()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": int(CONNECT_TIMEOUT),
            "options": durable_options(url),
        }
        if password is not None:
            kwargs["password"] = password
        self.kwargs = kwargs
        self.max_size = max_size
        # When each pooled connection last ran work (its check is skipped while in use).
        self._used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        self.pool = self._new_pool()

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.url,
            kwargs=self.kwargs,
            min_size=1,
            max_size=self.max_size,
            open=False,
            timeout=CONNECT_TIMEOUT,
            check=self._check_if_idle,
            name="signer-state",
        )
        pool.open(wait=False)
        return pool

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check: a round trip, but only for a connection idle a while (or new
        to this process's use), where a dropped connection is likely."""
        last = self._used.get(conn)
        if last is None or time.monotonic() - last > IDLE_CHECK_SECONDS:
            psycopg_pool.ConnectionPool.check_connection(conn)

    def _renew_pool(self) -> None:
        """A fresh pool once the database is back: the old one may be waiting out its
        reconnection backoff (seconds) though the database answers. Requests holding
        its connections finish on them; the ones waiting on it move to the new pool."""
        old, self.pool = self.pool, self._new_pool()
        threading.Thread(
            target=old.close, kwargs={"timeout": CONNECT_TIMEOUT}, name="old-pool", daemon=True
        ).start()

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (LISTEN, long locks)."""
        return psycopg.connect(self.url, **self.kwargs)

    def run(self, work: Callable[[psycopg.Connection[Any]], T], transaction: bool = True) -> T:
        """``work(conn)`` in one transaction (retried on a serialization failure)."""
        if waiting_forbidden():
            raise WouldBlock
        for attempt in range(5):
            pool = self.pool
            try:
                conn = pool.getconn(timeout=None if self._healthy else OUTAGE_TIMEOUT)
            except psycopg_pool.PoolTimeout as exc:
                if pool is not self.pool:  # renewed meanwhile: nothing ran, try the new one
                    continue
                self._set_healthy(False)
                raise StorageUnavailable(
                    f"state database {self.where} is unavailable: {_first_line(exc)}"
                ) from exc
            except psycopg_pool.PoolClosed:
                if pool is not self.pool:
                    continue
                raise StorageUnavailable(f"state database {self.where} is closed") from None
            try:
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
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                psycopg.errors.AdminShutdown,
            ) as exc:
                # The work may have run (a COMMIT whose answer was lost): never retried.
                self._set_healthy(False)
                raise StorageUnavailable(
                    f"state database {self.where} is unavailable: {_first_line(exc)}"
                ) from exc
            finally:
                self._used[conn] = time.monotonic()
                pool.putconn(conn)
        raise StorageUnavailable(f"state database {self.where} is unavailable (pool renewed)")

    def _set_healthy(self, healthy: bool) -> None:
        if healthy != self._healthy:
            with self._lock:
                if healthy != self._healthy:
                    self._healthy = healthy
                    if healthy:
                        log.info("state database %s reachable again", self.where)
                        self._renew_pool()
                    else:
                        log.error("state database %s unreachable", self.where)

    def healthy(self) -> bool:
        """Probe the database (``SELECT 1`` on a connection of its own, reconnected when
        it was lost): False while it cannot be reached. Not for the event loop."""
        with self._probe_lock:
            try:
                if self._probe is None or self._probe.closed:
                    self._probe = self.connect()
                self._probe.execute("SELECT 1").fetchone()
                ok = True
            except psycopg.Error:
                self._close_probe()
                ok = False
        self._set_healthy(ok)
        return ok

    def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                probe.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        with self._probe_lock:
            self._close_probe()
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
