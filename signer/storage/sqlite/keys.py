"""The key registry's table in SQLite (``keys.db``), shared by the worker processes.

Another worker's commit shows in ``PRAGMA data_version`` (per connection), which
``changed`` reads: one cheap check per request makes a retirement visible at once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

from signer.errors import AlreadyExists
from signer.storage.queries import find_keys
from signer.storage.records import KeyRecord, KeyState
from signer.storage.sqlite import Database, transaction

COLUMNS = tuple(f.name for f in fields(KeyRecord))
# Columns added after the first release: a registry made before them gains them on open.
_ADDED_COLUMNS = {"certificate_pem": "TEXT NOT NULL DEFAULT ''"}


# The table as sqlite-utils made it before (the same SQL): plain statements, so a worker
# need not import sqlite-utils (and click, pluggy...: 12 MiB) to create one table.
_SCHEMA = (
    """CREATE TABLE "keys" (
   "key_id" TEXT PRIMARY KEY,
   "object_id" TEXT NOT NULL,
   "algorithm_name" TEXT NOT NULL,
   "label" TEXT,
   "role" TEXT,
   "repository" TEXT,
   "public_key_pem" TEXT,
   "tuf_key_json" TEXT,
   "state" TEXT NOT NULL,
   "quorum" INTEGER,
   "created_at" REAL,
   "created_by" TEXT,
   "retired_at" REAL,
   "destroyed_at" REAL,
   "certificate_pem" TEXT
)""",
    'CREATE UNIQUE INDEX "idx_keys_object_id" ON "keys" ("object_id")',
    'CREATE INDEX "idx_keys_role_repository" ON "keys" ("role", "repository")',
)


def _has_table(conn: sqlite3.Connection) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keys'")
    return found.fetchone() is not None


class SqliteKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        self._versions: dict[int, int] = {}  # per connection: data_version last seen
        with self._db.use() as conn:
            if not _has_table(conn):
                with transaction(conn):
                    if not _has_table(conn):  # another worker may have made it meanwhile
                        for statement in _SCHEMA:
                            conn.execute(statement)
            _add_missing_columns(conn)

    def close(self) -> None:
        self._db.close()

    def add(self, record: KeyRecord) -> None:
        with self._db.use() as conn:
            try:
                conn.execute(_INSERT, values(record))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"key {record.key_id} is already registered") from exc

    def changed(self) -> bool:
        with self._db.use() as conn:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if self._versions.get(id(conn)) != version:
                self._versions[id(conn)] = version
                return True
            return False

    def get(self, key_id: str) -> KeyRecord | None:
        with self._db.use() as conn:
            row = conn.execute(SELECT + " WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else record_of(row)

    def find(
        self,
        role: str = "",
        repository: str = "",
        state: str = "",
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[KeyRecord]:
        sql, args = find_keys(SELECT, "?", role, repository, state, after, limit)
        with self._db.use() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [record_of(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        with self._db.use() as conn:
            rows = conn.execute("SELECT state, count(*) FROM keys GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}

    def set_state(
        self, key_id: str, state: KeyState, retired_at: float | None, destroyed_at: float | None
    ) -> None:
        with self._db.use() as conn:
            conn.execute(
                "UPDATE keys SET state = ?, retired_at = coalesce(?, retired_at), "
                "destroyed_at = coalesce(?, destroyed_at) WHERE key_id = ?",
                (state.value, retired_at, destroyed_at, key_id),
            )

    def set_certificate(self, key_id: str, certificate_pem: str) -> None:
        with self._db.use() as conn:
            conn.execute(
                "UPDATE keys SET certificate_pem = ? WHERE key_id = ?", (certificate_pem, key_id)
            )


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    present = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
    missing = [name for name in _ADDED_COLUMNS if name not in present]
    if not missing:
        return
    with transaction(conn):
        present = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
        for name in missing:
            if name not in present:  # another worker may have added it meanwhile
                conn.execute(f"ALTER TABLE keys ADD COLUMN {name} {_ADDED_COLUMNS[name]}")


_INSERT = f"INSERT INTO keys ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
SELECT = f"SELECT {', '.join(COLUMNS)} FROM keys"


def values(record: KeyRecord) -> tuple[object, ...]:
    """The record's column values in ``COLUMNS`` order (``dataclasses.asdict`` deep-copies)."""
    found: dict[str, object] = {name: getattr(record, name) for name in COLUMNS}
    found["state"] = record.state.value
    found["quorum"] = int(record.quorum)
    return tuple(found[name] for name in COLUMNS)


def record_of(row: tuple[object, ...] | sqlite3.Row) -> KeyRecord:
    found = dict(zip(COLUMNS, tuple(row), strict=True))
    found["state"] = KeyState(str(found["state"]))
    found["quorum"] = bool(found["quorum"])
    found["certificate_pem"] = found["certificate_pem"] or ""
    return KeyRecord(**found)  # type: ignore[arg-type]
