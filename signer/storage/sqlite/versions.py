"""TUF version claims in SQLite (``tuf.db``), shared by the worker processes.

A claim is recorded under BEGIN IMMEDIATE, so two workers can never both record two
different payloads at one version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from signer.storage.records import VersionClaim
from signer.storage.sqlite import Database, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tuf_versions (
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    version INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL,
    expires TEXT NOT NULL,
    signed_by TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (key_id, role)
)
"""
_LAST = "SELECT version, payload_sha256 FROM tuf_versions WHERE key_id = ? AND role = ?"


def refusal(latest: tuple[int, str] | None, claim: VersionClaim) -> tuple[int, str] | None:
    """The latest (version, sha256) if it refuses ``claim`` (a rollback or a fork)."""
    if latest is None:
        return None
    if claim.version < latest[0] or (
        claim.version == latest[0] and claim.payload_sha256 != latest[1]
    ):
        return latest
    return None


class SqliteVersions:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        with self._db.use() as conn:
            conn.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def claim(self, claim: VersionClaim, now: float) -> tuple[int, str] | None:
        # A failed COMMIT (disk full) leaves the transaction open: ``transaction`` ends
        # it (or every later claim would fail, "cannot start a transaction ...").
        with self._db.use() as conn:
            return self._claim(conn, claim, now)

    def claim_many(
        self, claims: Sequence[VersionClaim], now: float
    ) -> list[tuple[int, str] | None]:
        """One transaction each, as ``claim``: a local call, no round trip to save."""
        return [self.claim(claim, now) for claim in claims]

    @staticmethod
    def _claim(conn: sqlite3.Connection, claim: VersionClaim, now: float) -> tuple[int, str] | None:
        # Re-signing exactly the latest payload changes nothing: a read, no write lock.
        # (Linearised at this read: a higher version claimed later comes after it.)
        latest = _row(conn.execute(_LAST, (claim.key_id, claim.role)).fetchone())
        if latest == (claim.version, claim.payload_sha256):
            return None
        with transaction(conn):
            latest = _row(conn.execute(_LAST, (claim.key_id, claim.role)).fetchone())
            refused = refusal(latest, claim)
            if refused is not None:
                return refused
            conn.execute(
                "INSERT INTO tuf_versions VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key_id, role) DO UPDATE SET version = excluded.version, "
                "payload_sha256 = excluded.payload_sha256, expires = excluded.expires, "
                "signed_by = excluded.signed_by, time = excluded.time",
                (
                    claim.key_id,
                    claim.role,
                    claim.version,
                    claim.payload_sha256,
                    claim.expires,
                    claim.principal,
                    now,
                ),
            )
            return None

    def last(self, key_id: str, role: str) -> tuple[int, str] | None:
        with self._db.use() as conn:
            return _row(conn.execute(_LAST, (key_id, role)).fetchone())


def _row(row: Sequence[Any] | None) -> tuple[int, str] | None:
    return (int(row[0]), str(row[1])) if row else None
