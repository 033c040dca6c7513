"""The notary key map in SQLite (``notary.db``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from signer.storage.records import NotaryKey
from signer.storage.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notary_keys (
    notary_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    algorithm TEXT NOT NULL,
    public BLOB NOT NULL,
    role TEXT NOT NULL,
    gun TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
_SELECT = "SELECT notary_id, key_id, algorithm, public, role, gun FROM notary_keys"


class SqliteNotaryKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        with self._db.use() as conn:
            conn.execute(_SCHEMA)

    def add(self, key: NotaryKey, now: float) -> None:
        with self._db.use() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO notary_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.notary_id, key.key_id, key.algorithm, key.public, key.role, key.gun, now),
            )

    def get(self, notary_id: str) -> NotaryKey | None:
        with self._db.use() as conn:
            row = conn.execute(_SELECT + " WHERE notary_id = ?", (notary_id,)).fetchone()
        return None if row is None else _key(row)

    def all(self) -> list[NotaryKey]:
        with self._db.use() as conn:
            rows = conn.execute(_SELECT + " ORDER BY created_at").fetchall()
        return [_key(r) for r in rows]

    def close(self) -> None:
        self._db.close()


def _key(row: Sequence[Any]) -> NotaryKey:
    return NotaryKey(str(row[0]), str(row[1]), str(row[2]), bytes(row[3]), str(row[4]), str(row[5]))
