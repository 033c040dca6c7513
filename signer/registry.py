"""The key registry: what the daemon knows about each key, kept in SQLite.

The token holds the key material and is the source of truth for it; the registry maps a
TUF key_id to the token object id and keeps the metadata the token cannot (role,
repository, state, timestamps). Several worker processes share the database, so reads
are cached and the cache is dropped whenever another connection commits
(``PRAGMA data_version``), which makes a retirement visible to every worker at once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path

import sqlite_utils

from signer.algorithms import Algorithm, get_algorithm
from signer.errors import AlreadyExists, NotFound
from signer.storage.sqlite import connect


class KeyState(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    object_id: str
    algorithm_name: str
    label: str
    role: str
    repository: str
    public_key_pem: str
    tuf_key_json: str
    state: KeyState = KeyState.ACTIVE
    quorum: bool = False
    created_at: float = 0.0
    created_by: str = ""
    retired_at: float | None = None
    destroyed_at: float | None = None

    @property
    def algorithm(self) -> Algorithm:
        return get_algorithm(self.algorithm_name)


class KeyRegistry:
    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._db = sqlite_utils.Database(self._conn)
        self._lock = threading.Lock()
        self._cache: dict[str, KeyRecord] = {}
        self._data_version = -1
        with self._lock:
            table = self._db["keys"]
            if not table.exists():
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if not self._db["keys"].exists():
                        self._db["keys"].create(  # type: ignore[union-attr]
                            {
                                "key_id": str,
                                "object_id": str,
                                "algorithm_name": str,
                                "label": str,
                                "role": str,
                                "repository": str,
                                "public_key_pem": str,
                                "tuf_key_json": str,
                                "state": str,
                                "quorum": int,
                                "created_at": float,
                                "created_by": str,
                                "retired_at": float,
                                "destroyed_at": float,
                            },
                            pk="key_id",
                            not_null={"object_id", "algorithm_name", "state"},
                        )
                        self._db["keys"].create_index(["object_id"], unique=True)  # type: ignore[union-attr]
                        self._db["keys"].create_index(["role", "repository"])  # type: ignore[union-attr]
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def close(self) -> None:
        self._conn.close()

    def add(self, record: KeyRecord) -> KeyRecord:
        record = replace(record, created_at=record.created_at or time.time())
        with self._lock:
            try:
                # One plain INSERT: sqlite_utils' insert reads the table's schema first
                # (PRAGMA table_info, ~0.1 ms per key created).
                self._conn.execute(_INSERT, _values(record))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"key {record.key_id} is already registered") from exc
            self._cache[record.key_id] = record
        return record

    def get(self, key_id: str) -> KeyRecord:
        with self._lock:
            self._refresh_cache()
            record = self._cache.get(key_id)
            if record is None:
                rows = list(self._db.query("SELECT * FROM keys WHERE key_id = ?", [key_id]))
                if not rows:
                    raise NotFound(f"no key with key_id {key_id!r}")
                record = _record(rows[0])
                self._cache[key_id] = record
            return record

    def find(self, role: str = "", repository: str = "", state: str = "") -> list[KeyRecord]:
        where, args = [], []
        for column, value in (("role", role), ("repository", repository), ("state", state)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM keys" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = list(self._db.query(sql + " ORDER BY created_at, key_id", args))
        return [_record(r) for r in rows]

    def all(self) -> list[KeyRecord]:
        return self.find()

    def set_state(self, key_id: str, state: KeyState) -> KeyRecord:
        now = time.time()
        changes: dict[str, object] = {"state": state.value}
        if state is KeyState.RETIRED:
            changes["retired_at"] = now
        if state is KeyState.DESTROYED:
            changes["destroyed_at"] = now
        with self._lock:
            self._db["keys"].update(key_id, changes)  # type: ignore[union-attr]
            self._cache.pop(key_id, None)
        return self.get(key_id)

    def _refresh_cache(self) -> None:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version


_COLUMNS = tuple(f.name for f in fields(KeyRecord))
_INSERT = f"INSERT INTO keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def _values(record: KeyRecord) -> tuple[object, ...]:
    """The record's column values in ``_COLUMNS`` order (``dataclasses.asdict`` deep-copies)."""
    values: dict[str, object] = {name: getattr(record, name) for name in _COLUMNS}
    values["state"] = record.state.value
    values["quorum"] = int(record.quorum)
    return tuple(values[name] for name in _COLUMNS)


def _record(row: dict[str, object]) -> KeyRecord:
    values = dict(row)
    values["state"] = KeyState(str(values["state"]))
    values["quorum"] = bool(values["quorum"])
    return KeyRecord(**values)  # type: ignore[arg-type]
