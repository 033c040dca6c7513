"""The key registry: what the daemon knows about each key, kept in SQLite.

The token holds the key material and is the source of truth for it; the registry maps a
TUF key_id to the token object id and keeps the metadata the token cannot (role,
repository, state, timestamps). Several worker processes share the database, so reads
are cached and the cache is dropped whenever another connection commits
(``PRAGMA data_version``, checked once per request), which makes a retirement visible to
every worker at once.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path

import sqlite_utils

from signer.algorithms import Algorithm, get_algorithm
from signer.errors import AlreadyExists, NotFound, shown
from signer.storage.sqlite import Database, transaction


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
    certificate_pem: str = ""  # the last certificate issued for the key (IssueCertificate)

    @property
    def algorithm(self) -> Algorithm:
        return get_algorithm(self.algorithm_name)


class KeyRegistry:
    """Key records in SQLite (``signer.storage.sqlite.Database``), cached per process.

    ``refresh()`` checks once whether another connection committed (``PRAGMA
    data_version``) and drops the cache if so; ``get(key_id, refresh=False)`` then serves
    from the cache, so a batch of many items pays for one check.
    """

    def __init__(self, path: Path) -> None:
        self._store = Database(path)
        self._cache: dict[str, KeyRecord] = {}
        self._versions: dict[int, int] = {}  # per connection: data_version last seen
        with self._store.use() as conn:
            db = sqlite_utils.Database(conn)
            if not db["keys"].exists():
                with transaction(conn):
                    if not db["keys"].exists():
                        db["keys"].create(  # type: ignore[union-attr]
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
                                "certificate_pem": str,
                            },
                            pk="key_id",
                            not_null={"object_id", "algorithm_name", "state"},
                        )
                        db["keys"].create_index(["object_id"], unique=True)  # type: ignore[union-attr]
                        db["keys"].create_index(["role", "repository"])  # type: ignore[union-attr]
            _add_missing_columns(conn)

    def close(self) -> None:
        self._store.close()

    def add(self, record: KeyRecord) -> KeyRecord:
        record = replace(record, created_at=record.created_at or time.time())
        with self._store.use() as conn:
            try:
                conn.execute(_INSERT, _values(record))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"key {record.key_id} is already registered") from exc
            self._cache[record.key_id] = record
        return record

    def refresh(self) -> None:
        """Drop the cache if another connection (another worker) committed since."""
        with self._store.use() as conn:
            self._refresh(conn)

    def get(self, key_id: str, refresh: bool = True) -> KeyRecord:
        record = None if refresh else self._cache.get(key_id)
        if record is not None:
            return record
        with self._store.use() as conn:
            if refresh:
                self._refresh(conn)
                record = self._cache.get(key_id)
            if record is None:
                row = conn.execute(_SELECT + " WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no key with key_id {shown(key_id)}")
                record = _record(row)
                self._cache[key_id] = record
            return record

    def find(self, role: str = "", repository: str = "", state: str = "") -> list[KeyRecord]:
        where, args = [], []
        for column, value in (("role", role), ("repository", repository), ("state", state)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        with self._store.use() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, key_id", args).fetchall()
        return [_record(r) for r in rows]

    def all(self) -> list[KeyRecord]:
        return self.find()

    def set_state(self, key_id: str, state: KeyState) -> KeyRecord:
        now = time.time()
        retired = now if state is KeyState.RETIRED else None
        destroyed = now if state is KeyState.DESTROYED else None
        with self._store.use() as conn:
            conn.execute(
                "UPDATE keys SET state = ?, retired_at = coalesce(?, retired_at), "
                "destroyed_at = coalesce(?, destroyed_at) WHERE key_id = ?",
                (state.value, retired, destroyed, key_id),
            )
            self._cache.pop(key_id, None)
        return self.get(key_id)

    def set_certificate(self, key_id: str, certificate_pem: str) -> KeyRecord:
        """Keep ``certificate_pem`` as the key's current certificate (the last one issued)."""
        with self._store.use() as conn:
            conn.execute(
                "UPDATE keys SET certificate_pem = ? WHERE key_id = ?", (certificate_pem, key_id)
            )
            self._cache.pop(key_id, None)
        return self.get(key_id)

    def _refresh(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if self._versions.get(id(conn)) != version:
            self._cache.clear()
            self._versions[id(conn)] = version


_COLUMNS = tuple(f.name for f in fields(KeyRecord))
# Columns added after the first release: a registry made before them gains them on open.
_ADDED_COLUMNS = {"certificate_pem": "TEXT NOT NULL DEFAULT ''"}


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


_INSERT = f"INSERT INTO keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def _values(record: KeyRecord) -> tuple[object, ...]:
    """The record's column values in ``_COLUMNS`` order (``dataclasses.asdict`` deep-copies)."""
    values: dict[str, object] = {name: getattr(record, name) for name in _COLUMNS}
    values["state"] = record.state.value
    values["quorum"] = int(record.quorum)
    return tuple(values[name] for name in _COLUMNS)


_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM keys"


def _record(row: tuple[object, ...]) -> KeyRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["state"] = KeyState(str(values["state"]))
    values["quorum"] = bool(values["quorum"])
    values["certificate_pem"] = values["certificate_pem"] or ""
    return KeyRecord(**values)  # type: ignore[arg-type]
