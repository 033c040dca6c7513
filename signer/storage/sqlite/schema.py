"""Schema versions of the SQLite state: ``PRAGMA user_version`` of each file.

A state directory holds one file per store; each file records the version it was last
migrated to, and the state's version is the lowest of them (a crash between two files
leaves the others to do). A file from before versions existed (``user_version`` 0 with
tables in it) is at version 1. Version 1's tables are the ones each store creates when
it opens its file (``CREATE TABLE IF NOT EXISTS``, and the columns added since, see
``signer.storage.sqlite.keys``); later steps are the SQL below, per file, numbered as
in ``signer.storage.schema``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signer.storage.schema import VERSION, NewerSchema, Report, describe
from signer.storage.sqlite import connect, storage_error, transaction
from signer.storage.sqlite.audit import SqliteAuditChain
from signer.storage.sqlite.buckets import SqliteBuckets
from signer.storage.sqlite.keys import SqliteKeys
from signer.storage.sqlite.notary import SqliteNotaryKeys
from signer.storage.sqlite.quorum import SqliteQuorum
from signer.storage.sqlite.versions import SqliteVersions

log = logging.getLogger(__name__)

# Each file, and the store that creates version 1's tables in it when it opens the file.
_OPENERS: dict[str, Callable[[Path], Any]] = {
    "keys.db": SqliteKeys,
    "tuf.db": SqliteVersions,
    "quorum.db": SqliteQuorum,
    "notary.db": SqliteNotaryKeys,
    "ratelimit.db": SqliteBuckets,
    "audit.db": SqliteAuditChain,
}
FILES = tuple(_OPENERS)


def _add_column(table: str, name: str, kind: str) -> Callable[[sqlite3.Connection], None]:
    """A step adding a column unless it is there (SQLite has no ADD COLUMN IF NOT EXISTS;
    a store may add it itself on open)."""

    def step(conn: sqlite3.Connection) -> None:
        if name not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    return step


# version -> file -> statements or functions of the connection (the steps after version
# 1; a file a step does not name just records the version).
STEPS: dict[int, dict[str, list[str | Callable[[sqlite3.Connection], None]]]] = {
    2: {
        "audit.db": [
            "CREATE INDEX IF NOT EXISTS audit_signatures ON audit (key_id, time) "
            "WHERE outcome = 'allowed' AND operation IN ('sign', 'sign-raw') AND key_id != ''"
        ]
    },
    3: {"audit.db": [_add_column("audit", "replica", "TEXT NOT NULL DEFAULT ''")]},
}
assert max(STEPS) == VERSION, "a schema step for every version"


def file_version(path: Path) -> int:
    """The version ``path`` is at: 0 if it is missing or empty, 1 if it predates versions.

    0 too for a file SQLite cannot read: migrating it opens its store, which says what
    is wrong with it (a damaged audit log refuses the start in one line)."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
                version = 1 if int(tables.fetchone()[0]) else 0
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return version


def versions(state_dir: Path) -> dict[str, int]:
    return {name: file_version(state_dir / name) for name in FILES}


def where(state_dir: Path) -> str:
    return f"sqlite state {state_dir}"


def current(state_dir: Path) -> int:
    """The state's version (the lowest of its files'); NewerSchema if any is too new."""
    found = versions(state_dir)
    _refuse_newer(state_dir, found)
    return min(found.values())


def _refuse_newer(state_dir: Path, found: dict[str, int]) -> None:
    for name, version in found.items():
        if version > VERSION:
            raise NewerSchema(str(state_dir / name), version)


def prepare(state_dir: Path) -> Report:
    """Bring every file to ``VERSION`` (creating what is missing); what was done.

    Safe with several processes at once: each file's steps run under its write lock
    (BEGIN IMMEDIATE) after re-reading its version."""
    found = versions(state_dir)
    _refuse_newer(state_dir, found)
    report = Report(where(state_dir), min(found.values()), VERSION)
    if report.before == VERSION:
        return report
    for name, version in found.items():
        if version < VERSION:
            _migrate_file(state_dir / name, name)
    report.applied = [describe(v) for v in range(report.before + 1, VERSION + 1)]
    if report.before:
        log.info("%s", "; ".join(report.lines()))
    return report


def _migrate_file(path: Path, name: str) -> None:
    _baseline(path, name)
    conn = connect(path, synchronous="FULL")
    try:
        with transaction(conn):
            have = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if have > VERSION:
                raise NewerSchema(str(path), have)
            for version in range(max(have, 1) + 1, VERSION + 1):
                for statement in STEPS.get(version, {}).get(name, []):
                    if callable(statement):
                        statement(conn)
                    else:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {VERSION}")
    except sqlite3.Error as exc:
        raise storage_error(path, exc) from exc
    finally:
        conn.close()


def _baseline(path: Path, name: str) -> None:
    """Version 1's tables: what the store itself creates on opening its file."""
    _OPENERS[name](path).close()
