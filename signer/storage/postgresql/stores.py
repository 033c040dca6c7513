"""Key registry, TUF versions, quorum requests, notary keys and buckets in PostgreSQL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import errors

from signer.errors import AlreadyExists, StorageUnavailable
from signer.storage.postgresql.db import Database
from signer.storage.queries import find_keys
from signer.storage.records import (
    KeyRecord,
    KeyState,
    NotaryKey,
    SignatureRequest,
    VersionClaim,
)
from signer.storage.sqlite.keys import COLUMNS, record_of, values
from signer.storage.sqlite.quorum import request_of
from signer.storage.sqlite.versions import refusal
from signer.storage.tokenbucket import refill, wait

log = logging.getLogger(__name__)

KEYS_CHANNEL = "signer_keys"
_SELECT_KEYS = f"SELECT {', '.join(COLUMNS)} FROM keys"


class PostgresKeys:
    """Key records; a change made anywhere is NOTIFY'd, and a listener thread on a
    connection of its own counts the notifications: ``changed`` compares the count, so
    no request polls the database. While the listener is not connected every call says
    changed (no cache is trusted that could miss a retirement)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._events = 0
        self._seen = -1
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._listen, name="keys-listener", daemon=True)
        self._thread.start()
        self._listening.wait(2.0)

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                conn = self._db.connect()
                self._conn = conn
                with conn:
                    conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    self._events += 1  # anything may have changed while we were away
                    self._listening.set()
                    backoff = 0.1
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._events += 1
            except Exception as exc:
                if self._stop.is_set():
                    return
                if self._listening.is_set():
                    log.warning("key change listener lost its connection: %s", exc)
                self._listening.clear()
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)
            finally:
                self._listening.clear()

    def changed(self) -> bool:
        if not self._listening.is_set():
            return True
        events = self._events
        if events != self._seen:
            self._seen = events
            return True
        return False

    def add(self, record: KeyRecord) -> None:
        sql = f"INSERT INTO keys ({', '.join(COLUMNS)}) VALUES ({', '.join('%s' for _ in COLUMNS)})"

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql, values(record))
            conn.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, record.key_id))

        try:
            self._db.run(work)
        except errors.UniqueViolation as exc:
            raise AlreadyExists(f"key {record.key_id} is already registered") from exc

    def get(self, key_id: str) -> KeyRecord | None:
        row = self._db.run(
            lambda conn: conn.execute(_SELECT_KEYS + " WHERE key_id = %s", (key_id,)).fetchone(),
            transaction=False,
        )
        return None if row is None else record_of(row)

    def find(
        self,
        role: str = "",
        repository: str = "",
        state: str = "",
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[KeyRecord]:
        sql, args = find_keys(_SELECT_KEYS, "%s", role, repository, state, after, limit)
        rows = self._db.run(
            lambda conn: conn.execute(sql, args).fetchall(),
            transaction=False,
        )
        return [record_of(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self._db.run(
            lambda conn: conn.execute("SELECT state, count(*) FROM keys GROUP BY state").fetchall(),
            transaction=False,
        )
        return {str(state): int(n) for state, n in rows}

    def set_state(
        self, key_id: str, state: KeyState, retired_at: float | None, destroyed_at: float | None
    ) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE keys SET state = %s, retired_at = coalesce(%s, retired_at), "
                "destroyed_at = coalesce(%s, destroyed_at) WHERE key_id = %s",
                (state.value, retired_at, destroyed_at, key_id),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, key_id))

        self._db.run(work)

    def set_certificate(self, key_id: str, certificate_pem: str) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE keys SET certificate_pem = %s WHERE key_id = %s", (certificate_pem, key_id)
            )
            conn.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, key_id))

        self._db.run(work)

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=1.0)
            except Exception:
                pass
        self._thread.join(timeout=3)


_LAST = "SELECT version, payload_sha256 FROM tuf_versions WHERE key_id = %s AND role = %s"


_CLAIM = (
    "INSERT INTO tuf_versions (key_id, role, version, payload_sha256, expires, signed_by, time) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key_id, role) DO UPDATE SET "
    "version = EXCLUDED.version, payload_sha256 = EXCLUDED.payload_sha256, "
    "expires = EXCLUDED.expires, signed_by = EXCLUDED.signed_by, time = EXCLUDED.time "
    "WHERE tuf_versions.version < EXCLUDED.version RETURNING version"
)


# The multi-row form of _CLAIM, answering which (key, role) rows moved.
_CLAIM_MANY = (
    "INSERT INTO tuf_versions (key_id, role, version, payload_sha256, expires, signed_by, time) "
    "VALUES {values} ON CONFLICT (key_id, role) DO UPDATE SET "
    "version = EXCLUDED.version, payload_sha256 = EXCLUDED.payload_sha256, "
    "expires = EXCLUDED.expires, signed_by = EXCLUDED.signed_by, time = EXCLUDED.time "
    "WHERE tuf_versions.version < EXCLUDED.version RETURNING key_id, role"
)
_LAST_MANY = (
    "SELECT key_id, role, version, payload_sha256 FROM tuf_versions "
    "WHERE (key_id, role) IN ({pairs})"
)


def _not_moved(claim: VersionClaim, latest: tuple[int, str] | None) -> tuple[int, str] | None:
    """A claim whose upsert did not move the row: the stored version is as high or higher.
    The same payload again is a re-sign (None: allowed); anything else is a rollback or a
    fork (the latest that refuses it)."""
    if latest == (claim.version, claim.payload_sha256):
        return None
    if latest is None:  # rows are never deleted: only a damaged table gets here
        raise StorageUnavailable(f"the version claim for {claim.key_id} was lost")
    return refusal(latest, claim) or latest


class PostgresVersions:
    """A claim is one upsert that moves the (key, role) row only forwards: replicas claim
    one after the other (the row lock), and the common case is one round trip."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, claim: VersionClaim, now: float) -> tuple[int, str] | None:
        args = (claim.key_id, claim.role)
        params = (*args, claim.version, claim.payload_sha256, claim.expires, claim.principal, now)

        def work(conn: psycopg.Connection[Any]) -> bool:
            # One round trip: BEGIN, SET, the upsert and COMMIT pipelined. No fsync of its
            # own: the signature is released only after its audit entry commits
            # (synchronously), which flushes the WAL up to and past this claim.
            with conn.pipeline(), conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                cursor = conn.execute(_CLAIM, params)
            return cursor.fetchone() is not None

        if self._db.run(work, transaction=False):
            return None  # a new row, or a higher version: claimed
        return _not_moved(claim, self.last(*args))

    def claim_many(
        self, claims: Sequence[VersionClaim], now: float
    ) -> list[tuple[int, str] | None]:
        """The claims of a group in one transaction: one multi-row upsert (each row moves
        only forwards) and, for the rows that did not move, one read. Two claims for the
        same (key, role) cannot share an upsert: such a group claims one by one."""
        pairs = [(c.key_id, c.role) for c in claims]
        if len(claims) < 2 or len(set(pairs)) < len(pairs):
            return [self.claim(c, now) for c in claims]
        values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(claims))
        params = [
            v
            for c in claims
            for v in (c.key_id, c.role, c.version, c.payload_sha256, c.expires, c.principal, now)
        ]

        def work(
            conn: psycopg.Connection[Any],
        ) -> tuple[set[tuple[str, str]], dict[tuple[str, str], tuple[int, str]]]:
            with conn.pipeline(), conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                moved = conn.execute(_CLAIM_MANY.format(values=values), params)
            stay = set(pairs) - {(str(r[0]), str(r[1])) for r in moved.fetchall()}
            if not stay:
                return stay, {}
            keys = sorted(stay)
            rows = conn.execute(
                _LAST_MANY.format(pairs=", ".join(["(%s, %s)"] * len(keys))),
                [v for pair in keys for v in pair],
            ).fetchall()
            return stay, {(str(r[0]), str(r[1])): (int(r[2]), str(r[3])) for r in rows}

        stay, latest_of = self._db.run(work, transaction=False)
        return [
            _not_moved(claim, latest_of.get(pair)) if pair in stay else None
            for claim, pair in zip(claims, pairs, strict=True)
        ]

    def last(self, key_id: str, role: str) -> tuple[int, str] | None:
        row = self._db.run(
            lambda conn: conn.execute(_LAST, (key_id, role)).fetchone(), transaction=False
        )
        return (int(row[0]), str(row[1])) if row else None

    def close(self) -> None:
        return None


_REQUEST = (
    "SELECT request_id, key_id, payload, payload_sha256, requester, reason, "
    "approvals_required, state, created_at, expires_at FROM signature_requests "
    "WHERE request_id = %s"
)


def _request(
    conn: psycopg.Connection[Any], request_id: str, lock: bool = False
) -> SignatureRequest | None:
    row = conn.execute(_REQUEST + (" FOR UPDATE" if lock else ""), (request_id,)).fetchone()
    if row is None:
        return None
    approvers = tuple(
        str(r[0])
        for r in conn.execute(
            "SELECT approver FROM approvals WHERE request_id = %s ORDER BY time, approver",
            (request_id,),
        )
    )
    return request_of(row, approvers)


class PostgresQuorum:
    """An approval locks its request's row; a claim is one conditional UPDATE."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, request: SignatureRequest) -> None:
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO signature_requests VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)",
                (
                    request.request_id,
                    request.key_id,
                    request.payload,
                    request.payload_sha256,
                    request.requester,
                    request.reason,
                    request.approvals_required,
                    request.state.value,
                    request.created_at,
                    request.expires_at,
                ),
            )
        )

    def get(self, request_id: str) -> SignatureRequest | None:
        return self._db.run(lambda conn: _request(conn, request_id))

    def approve(
        self,
        request_id: str,
        approver: str,
        now: float,
        check: Callable[[SignatureRequest | None], None],
    ) -> SignatureRequest | None:
        def work(conn: psycopg.Connection[Any]) -> SignatureRequest | None:
            request = _request(conn, request_id, lock=True)
            check(request)
            assert request is not None  # check refuses a missing request
            conn.execute("INSERT INTO approvals VALUES (%s, %s, %s)", (request_id, approver, now))
            if len(request.approvers) + 1 >= request.approvals_required:
                conn.execute(
                    "UPDATE signature_requests SET state = 'approved' WHERE request_id = %s",
                    (request_id,),
                )
            return _request(conn, request_id)

        return self._db.run(work)

    def claim(self, request_id: str, now: float) -> bool:
        def work(conn: psycopg.Connection[Any]) -> bool:
            cursor = conn.execute(
                "UPDATE signature_requests SET state = 'fulfilled', fulfilled_at = %s "
                "WHERE request_id = %s AND state = 'approved' AND expires_at >= %s",
                (now, request_id, now),
            )
            return cursor.rowcount == 1

        return self._db.run(work)

    def open_counts(self, now: float) -> dict[str, int]:
        rows = self._db.run(
            lambda conn: conn.execute(
                "SELECT state, count(*) FROM signature_requests "
                "WHERE state IN ('pending', 'approved') AND expires_at >= %s GROUP BY state",
                (now,),
            ).fetchall(),
            transaction=False,
        )
        return {str(state): int(n) for state, n in rows}

    def close(self) -> None:
        return None


_NOTARY = "SELECT notary_id, key_id, algorithm, public, role, gun FROM notary_keys"


def _notary(row: Sequence[Any]) -> NotaryKey:
    return NotaryKey(str(row[0]), str(row[1]), str(row[2]), bytes(row[3]), str(row[4]), str(row[5]))


class PostgresNotaryKeys:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, key: NotaryKey, now: float) -> None:
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO notary_keys VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (notary_id) DO UPDATE SET key_id = excluded.key_id, "
                "algorithm = excluded.algorithm, public = excluded.public, "
                "role = excluded.role, gun = excluded.gun, created_at = excluded.created_at",
                (key.notary_id, key.key_id, key.algorithm, key.public, key.role, key.gun, now),
            )
        )

    def get(self, notary_id: str) -> NotaryKey | None:
        row = self._db.run(
            lambda conn: conn.execute(_NOTARY + " WHERE notary_id = %s", (notary_id,)).fetchone(),
            transaction=False,
        )
        return None if row is None else _notary(row)

    def all(self) -> list[NotaryKey]:
        rows = self._db.run(
            lambda conn: conn.execute(_NOTARY + " ORDER BY created_at").fetchall(),
            transaction=False,
        )
        return [_notary(r) for r in rows]

    def close(self) -> None:
        return None


class PostgresBuckets:
    """A take locks the bucket's row: replicas spend one shared level."""

    def __init__(self, db: Database, clock: Callable[[], float] | None = None) -> None:
        import time

        self._db = db
        self._clock = clock or time.time

    def take(self, name: str, rate: float, burst: float, n: float) -> float:
        def work(conn: psycopg.Connection[Any]) -> float:
            select = "SELECT level, stamp FROM buckets WHERE name = %s FOR UPDATE"
            row = conn.execute(select, (name,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO buckets VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
                    (name, burst, 0.0),
                )
                row = conn.execute(select, (name,)).fetchone()
                assert row is not None  # inserted, or another's insert that we now lock
                fresh = float(row[1]) == 0.0
            else:
                fresh = False
            now = self._clock()  # under the row lock: stamps are written in time order
            if fresh:
                level = burst
            else:
                level = refill(float(row[0]), float(row[1]), now, rate, burst)
                now = max(now, float(row[1]))  # a clock stepping back refills nothing
            if level < n:
                if fresh:
                    conn.execute("UPDATE buckets SET stamp = %s WHERE name = %s", (now, name))
                return wait(level, n, rate)
            conn.execute(
                "UPDATE buckets SET level = %s, stamp = %s WHERE name = %s",
                (level - n, now, name),
            )
            return 0.0

        return self._db.run(work)

    def close(self) -> None:
        return None
