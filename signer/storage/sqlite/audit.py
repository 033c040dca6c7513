"""The audit chain and its checkpoints in SQLite (``audit.db``).

The writer's connection runs with ``synchronous=FULL`` (every commit fsync'd) and each
append takes the write lock (BEGIN IMMEDIATE) and reads the tip inside it, so several
worker processes share one chain. Checkpoints use a second connection, so the
checkpointer never waits behind the writer's lock in this process. The reader opens the
file read-only (``signerd audit verify`` works with the daemon running or not).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from signer.errors import ConfigError, StorageUnavailable
from signer.storage.interfaces import AUDIT_COLUMNS, RowBuilder
from signer.storage.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    principal TEXT NOT NULL,
    operation TEXT NOT NULL,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    repository TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    request_id TEXT NOT NULL,
    replica TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""
# Columns added after the first release: a chain made before them gains them on open
# (its entries read as "", which the hash leaves out: they verify as they did).
_ADDED_COLUMNS = {"replica": "TEXT NOT NULL DEFAULT ''"}

# Signed (seq, hash) of the chain's tip, written by signer.audit.checkpoint.
_CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    time REAL NOT NULL,
    key_id TEXT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
)
"""

_TIP = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
_ROW_PLACEHOLDERS = f"({', '.join('?' for _ in AUDIT_COLUMNS)})"
# Rows per INSERT statement: far below SQLite's 32,766 bound parameters (15 per row).
_ROWS_PER_INSERT = 512
_CHECKPOINT_COLUMNS = "id, seq, hash, key_id, body, signature"


@functools.lru_cache(maxsize=2 * _ROWS_PER_INSERT)
def _insert_sql(rows: int, guarded: bool) -> str:
    """One INSERT of ``rows`` rows; ``guarded``: only if the tip is still the (seq, hash)
    bound after the rows' values."""
    values = ", ".join([_ROW_PLACEHOLDERS] * rows)
    into = f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)})"
    if not guarded:
        return f"{into} VALUES {values}"
    return (
        f"{into} SELECT * FROM (VALUES {values}) "
        f"WHERE (SELECT seq FROM audit ORDER BY seq DESC LIMIT 1) IS ? "
        f"AND (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1) IS ?"
    )


def _values(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


class SqliteAuditChain:
    """The chain's table. ``synchronous``: SQLite's setting for commits (FULL: fsync'd)."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.where = str(path)
        try:
            self._conn = connect(path, synchronous=synchronous)
            self._conn.execute(_SCHEMA)
            self._conn.execute(_CHECKPOINT_SCHEMA)
            _add_missing_columns(self._conn)
        except (StorageUnavailable, sqlite3.DatabaseError) as exc:
            # Only the daemon's start-up opens the log: a clear message, not a traceback.
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"cannot open the audit log {path}: {cause} (a damaged file, or not a "
                "database? check the state directory; see `signerd audit verify`)"
            ) from exc
        # The tip this connection last wrote or read; False: unknown (read it under the lock).
        self._tip: tuple[int, str] | Literal[False] | None = False
        self._guess = True  # whether to try the insert guarded by the tip (see append)
        self._side: sqlite3.Connection | None = None  # the checkpointer's
        self._side_lock = threading.Lock()

    def append(self, build: RowBuilder) -> None:
        """Raises the sqlite3 error itself (the log tells a full disk apart).

        The common case is one statement: the rows are built on the tip this connection
        last saw and inserted only if it is still the tip (one autocommit transaction,
        fsync'd). Each SQLite call hands the GIL over twice, and the writer thread's
        waits for it back cost more CPU than the SQL, so fewer calls matter. If another
        worker appended meanwhile, nothing is inserted and the append runs again as a
        transaction that reads the tip under the write lock, its rows again in one
        statement. Where the workers append in turn, the guess would miss each time: it
        is tried again only once a locked read finds the tip it would have guessed.
        """
        conn = self._conn
        try:
            known = self._tip
            if known is not False and self._guess:
                rows = build(known)
                if not rows:
                    return
                if len(rows) <= _ROWS_PER_INSERT and self._insert_if_tip(rows):
                    return
            with transaction(conn):
                tip = conn.execute(_TIP).fetchone()
                self._tip = (int(tip[0]), str(tip[1])) if tip else None
                # Would the guarded insert have done? (Not known: try it next time.)
                self._guess = known is False or self._tip == known
                rows = build(self._tip)
                if rows:
                    self._insert_rows(rows)
            if rows:
                self._tip = (int(rows[-1][0]), str(rows[-1][-1]))
        except BaseException:  # ``transaction`` rolled back (a failed ROLLBACK hides nothing)
            self._tip = False  # unknown: read it again under the lock next time
            raise

    def _insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (inside a transaction), ``_ROWS_PER_INSERT`` to a statement: one
        SQLite step each, where ``executemany`` takes one (and two GIL hand-overs) a row."""
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            self._conn.execute(_insert_sql(len(chunk), guarded=False), _values(chunk))

    def _insert_if_tip(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """Insert ``rows`` in one statement if the chain's tip is still ``self._tip``."""
        tip = self._tip
        params = _values(rows) + ([tip[0], tip[1]] if tip else [None, None])
        if self._conn.execute(_insert_sql(len(rows), guarded=True), params).rowcount == len(rows):
            self._tip = (int(rows[-1][0]), str(rows[-1][-1]))
            return True
        self._tip = False  # another writer appended: read the tip under the lock
        return False

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with transaction(self._conn):
            yield

    @contextlib.contextmanager
    def _checkpoints(self) -> Iterator[sqlite3.Connection]:
        with self._side_lock:
            if self._side is None:
                # FULL, like the entries: an anchored checkpoint must never vanish.
                self._side = connect(self.path, synchronous="FULL")
            yield self._side

    def tip(self) -> tuple[int, str] | None:
        with self._checkpoints() as conn:
            row = conn.execute(_TIP).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def last_checkpoint(self) -> tuple[int, float] | None:
        with self._checkpoints() as conn:
            row = conn.execute(
                "SELECT seq, time FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (int(row[0]), float(row[1])) if row else None

    def add_checkpoint(
        self, seq: int, tip_hash: str, when: float, key_id: str, body: str, signature: str
    ) -> int | None:
        with self._checkpoints() as conn, transaction(conn):
            cursor = conn.execute(
                "INSERT OR IGNORE INTO audit_checkpoints"
                " (seq, hash, time, key_id, body, signature) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, tip_hash, when, key_id, body, signature),
            )
            return cursor.lastrowid if cursor.rowcount == 1 else None

    def last_signatures(self) -> dict[str, float]:
        conn = connect(self.path)  # a read on its own connection
        try:
            rows = conn.execute(
                "SELECT key_id, max(time) FROM audit WHERE outcome = 'allowed' AND key_id != '' "
                "AND operation IN ('sign', 'sign-raw') GROUP BY key_id"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot read the audit log {self.path}: {exc}") from exc
        finally:
            conn.close()
        return {str(key_id): float(when) for key_id, when in rows}

    def close(self) -> None:
        self._conn.close()
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no such database: {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def damaged(path: Path, exc: sqlite3.Error) -> StorageUnavailable:
    """One line for a file that is not (or no longer) a readable audit database."""
    return StorageUnavailable(
        f"cannot read {path}: {exc} (a damaged file, or not a signerd database)"
    )


class SqliteAuditReader:
    """The chain in ``path``, read-only; the audit keys from ``keys_db`` (the registry)."""

    def __init__(self, path: Path, keys_db: Path | None = None) -> None:
        self.path = path
        self.where = str(path)
        self.keys_db = keys_db

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        conn = open_readonly(self.path)
        try:
            conn.execute("BEGIN")  # one consistent snapshot of entries and checkpoints
            entries = list(_rows(conn))
            checkpoints: list[dict[str, Any]] | None
            try:
                checkpoints = [
                    dict(r)
                    for r in conn.execute(
                        f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY id"
                    )
                ]
            except sqlite3.OperationalError:
                checkpoints = None
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise damaged(self.path, exc) from exc
        finally:
            conn.close()
        return entries, checkpoints

    def entries(self, since: int = 0) -> Iterator[dict[str, Any]]:
        conn = open_readonly(self.path)
        try:
            yield from _rows(conn, since)
        except sqlite3.Error as exc:
            raise damaged(self.path, exc) from exc
        finally:
            conn.close()

    def audit_keys(self, role: str) -> list[tuple[str, str]]:
        if self.keys_db is None or not self.keys_db.exists():
            return []
        conn = open_readonly(self.keys_db)
        try:
            return [
                (str(r["key_id"]), str(r["tuf_key_json"]))
                for r in conn.execute(
                    "SELECT key_id, tuf_key_json FROM keys WHERE role = ?", (role,)
                )
            ]
        except sqlite3.Error as exc:
            raise damaged(self.keys_db, exc) from exc
        finally:
            conn.close()


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    present = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    if all(name in present for name in _ADDED_COLUMNS):
        return
    with transaction(conn):
        present = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:  # another worker may have added it meanwhile
                conn.execute(f"ALTER TABLE audit ADD COLUMN {name} {kind}")


def _selected(conn: sqlite3.Connection) -> str:
    """The columns to read: a column added since reads as "" from a file made before it
    (opened read-only: the reader never adds it)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    return ", ".join(
        c if c in present or c not in _ADDED_COLUMNS else f"'' AS {c}" for c in AUDIT_COLUMNS
    )


def _rows(conn: sqlite3.Connection, since: int = 0) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(
        f"SELECT {_selected(conn)} FROM audit WHERE seq > ? ORDER BY seq", (since,)
    )
    for row in cursor:
        yield dict(row)
