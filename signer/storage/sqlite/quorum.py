"""Signature requests and approvals in SQLite (``quorum.db``).

An approval is read-modify-write under BEGIN IMMEDIATE; a claim is one conditional
UPDATE, so only one caller (any worker) fulfils a request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from signer.storage.records import RequestState, SignatureRequest
from signer.storage.sqlite import Database, transaction

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS signature_requests (
        request_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        payload_sha256 TEXT NOT NULL,
        requester TEXT NOT NULL,
        reason TEXT NOT NULL,
        approvals_required INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        fulfilled_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS approvals (
        request_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (request_id, approver)
    )""",
]


class SqliteQuorum:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        with self._db.use() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def close(self) -> None:
        self._db.close()

    def add(self, request: SignatureRequest) -> None:
        with self._db.use() as conn:
            conn.execute(
                "INSERT INTO signature_requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
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

    def get(self, request_id: str) -> SignatureRequest | None:
        with self._db.use() as conn:
            return _get(conn, request_id)

    def approve(
        self,
        request_id: str,
        approver: str,
        now: float,
        check: Callable[[SignatureRequest | None], None],
    ) -> SignatureRequest | None:
        with self._db.use() as conn:
            with transaction(conn):
                request = _get(conn, request_id)
                check(request)  # it may write the audit entry (then commit or nothing)
                assert request is not None  # check refuses a missing request
                conn.execute("INSERT INTO approvals VALUES (?, ?, ?)", (request_id, approver, now))
                if len(request.approvers) + 1 >= request.approvals_required:
                    conn.execute(
                        "UPDATE signature_requests SET state = ? WHERE request_id = ?",
                        (RequestState.APPROVED.value, request_id),
                    )
            return _get(conn, request_id)

    def claim(self, request_id: str, now: float) -> bool:
        with self._db.use() as conn:
            cursor = conn.execute(
                "UPDATE signature_requests SET state = ?, fulfilled_at = ? "
                "WHERE request_id = ? AND state = ? AND expires_at >= ?",
                (RequestState.FULFILLED.value, now, request_id, RequestState.APPROVED.value, now),
            )
            return cursor.rowcount == 1

    def open_counts(self, now: float) -> dict[str, int]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM signature_requests "
                "WHERE state IN (?, ?) AND expires_at >= ? GROUP BY state",
                (RequestState.PENDING.value, RequestState.APPROVED.value, now),
            ).fetchall()
        return {str(state): int(n) for state, n in rows}


def _get(conn: sqlite3.Connection, request_id: str) -> SignatureRequest | None:
    row = conn.execute(
        "SELECT request_id, key_id, payload, payload_sha256, requester, reason, "
        "approvals_required, state, created_at, expires_at "
        "FROM signature_requests WHERE request_id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    approvers = tuple(
        r[0]
        for r in conn.execute(
            "SELECT approver FROM approvals WHERE request_id = ? ORDER BY time, approver",
            (request_id,),
        )
    )
    return request_of(row, approvers)


def request_of(row: Sequence[Any], approvers: tuple[str, ...]) -> SignatureRequest:
    return SignatureRequest(
        str(row[0]),
        str(row[1]),
        bytes(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        int(row[6]),
        RequestState(row[7]),
        float(row[8]),
        float(row[9]),
        approvers,
    )
