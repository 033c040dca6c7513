"""Notary key ID -> registry key_id, kept in SQLite next to the registry.

Notary names a key by the hash of its own key JSON; the registry names it by the TUF
(securesystemslib) key_id. This table links the two and keeps what notary asks for
without touching the token: the algorithm, the public key bytes, the role and the GUN.
Rows never change once written, so every worker process caches them freely.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from signer.errors import NotFound
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


@dataclass(frozen=True)
class NotaryKey:
    notary_id: str
    key_id: str  # the registry's key_id
    algorithm: str  # notary's key algorithm: "ecdsa" or "ed25519"
    public: bytes  # as notary encodes it (see signer.notary.keys)
    role: str
    gun: str


class NotaryKeyStore:
    def __init__(self, path: Path) -> None:
        self._db = Database(path)
        with self._db.use() as conn:
            conn.execute(_SCHEMA)
        self._cache: dict[str, NotaryKey] = {}

    def add(self, key: NotaryKey) -> None:
        with self._db.use() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO notary_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.notary_id,
                    key.key_id,
                    key.algorithm,
                    key.public,
                    key.role,
                    key.gun,
                    time.time(),
                ),
            )
            self._cache[key.notary_id] = key

    def get(self, notary_id: str) -> NotaryKey:
        key = self._cache.get(notary_id)
        if key is not None:
            return key
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT notary_id, key_id, algorithm, public, role, gun FROM notary_keys "
                "WHERE notary_id = ?",
                (notary_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"key {notary_id} not found")
        key = NotaryKey(row[0], row[1], row[2], bytes(row[3]), row[4], row[5])
        self._cache[notary_id] = key
        return key

    def all(self) -> list[NotaryKey]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT notary_id, key_id, algorithm, public, role, gun FROM notary_keys "
                "ORDER BY created_at"
            ).fetchall()
        return [NotaryKey(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def close(self) -> None:
        self._db.close()
