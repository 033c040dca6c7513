"""The replica named in each audit entry, and chains written before replicas were named.

``replica`` is hashed only when non-empty: a chain made before the column existed (or by
one host that names no replica) verifies as it did, before and after its file gains the
column, and new entries naming a replica are covered by their hash like any field.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from signer.audit.log import GENESIS, AuditEvent, AuditLog, Outcome
from signer.audit.verify import export, verify
from signer.storage import open_backend

# The audit table as the first release made it: no replica column.
OLD_SCHEMA = """
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, principal TEXT NOT NULL,
    operation TEXT NOT NULL, key_id TEXT NOT NULL, role TEXT NOT NULL,
    repository TEXT NOT NULL, payload_sha256 TEXT NOT NULL, outcome TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL, request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL
)
"""


def _old_chain(path: Path, count: int) -> None:
    """``count`` entries hashed as the first release did (written out here, not imported)."""
    conn = sqlite3.connect(path)
    conn.execute(OLD_SCHEMA)
    prev = GENESIS
    for seq in range(1, count + 1):
        body = {
            "time": round(time.time() - 10 + seq, 3),
            "principal": "alice",
            "operation": "sign",
            "key_id": "k" * 64,
            "role": "targets",
            "repository": "repo",
            "payload_sha256": hashlib.sha256(b"%d" % seq).hexdigest(),
            "outcome": "allowed",
            "code": "OK",
            "detail": "",
            "request_id": "",
        }
        material = json.dumps([prev, seq, body], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(material.encode()).hexdigest()
        conn.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, *body.values(), prev, digest),
        )
        prev = digest
    conn.commit()
    conn.close()


def _columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute("PRAGMA table_info(audit)")}


def _export(path: Path) -> list[dict[str, object]]:
    out = io.StringIO()
    export(path, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _event(n: int) -> AuditEvent:
    return AuditEvent("bob", "sign-raw", Outcome.ALLOWED, key_id="k" * 64, detail=f"new {n}")


def test_an_existing_sqlite_chain_still_verifies(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    _old_chain(db, 5)
    # Read-only, as it is (no replica column): verifies, and exports the entries unnamed.
    report = verify(db)
    assert report.ok and report.entries == 5, [str(p) for p in report.problems]
    assert [r["replica"] for r in _export(db)] == [""] * 5
    assert "replica" not in _columns(db)

    # A daemon opens it: the file gains the column, the old entries still verify, and it
    # appends entries naming no replica (one host) and then entries naming one.
    log = AuditLog(db)
    try:
        log.record(_event(6), _event(7))
    finally:
        log.close()
    log = AuditLog(db, replica="signer-a")
    try:
        log.record(_event(8))
    finally:
        log.close()
    assert "replica" in _columns(db)
    report = verify(db)
    assert report.ok and report.entries == 8, [str(p) for p in report.problems]
    assert [r["replica"] for r in _export(db)] == [""] * 7 + ["signer-a"]


def test_the_replica_is_covered_by_the_hash(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    _old_chain(db, 2)
    log = AuditLog(db, replica="signer-a")
    try:
        log.record(_event(3), _event(4))
    finally:
        log.close()
    assert verify(db).ok
    for seq, forged in ((1, "signer-b"), (3, "signer-b"), (4, "")):
        conn = sqlite3.connect(db)
        (before,) = conn.execute("SELECT replica FROM audit WHERE seq = ?", (seq,)).fetchone()
        with conn:
            conn.execute("UPDATE audit SET replica = ? WHERE seq = ?", (forged, seq))
        report = verify(db)
        with conn:
            conn.execute("UPDATE audit SET replica = ? WHERE seq = ?", (before, seq))
        conn.close()
        assert not report.ok, (seq, forged)
        assert [(p.kind, p.seq) for p in report.problems] == [("edited", seq)], report.problems
    assert verify(db).ok


def test_a_shared_chain_from_before_the_column(tmp_path: Path, pg_cluster: Any) -> None:
    """PostgreSQL: a database whose audit table lacks the column reads it as "" and
    verifies; the next replica to open it migrates it, and names itself."""
    url = pg_cluster.fresh_database(f"replica_col_{secrets.token_hex(4)}")
    backend = open_backend(tmp_path, url, pg_cluster.password)
    try:
        log = AuditLog(backend.audit())  # unnamed: hashed as before the column
        try:
            log.record(_event(1), _event(2))
        finally:
            log.close()
        # What a database at schema version 2 (before the column) looks like.
        database = url.rsplit("/", 1)[1]
        pg_cluster.psql("ALTER TABLE audit DROP COLUMN replica", database)
        pg_cluster.psql("UPDATE schema_version SET version = 2", database)
        report = verify(backend.audit_reader())
        assert report.ok and report.entries == 2, [str(p) for p in report.problems]
        assert [r["replica"] for r in backend.audit_reader().entries()] == ["", ""]
    finally:
        backend.close()
    backend = open_backend(tmp_path, url, pg_cluster.password)  # migrates: the column is back
    try:
        log = AuditLog(backend.audit(), replica="signer-b")
        try:
            log.record(_event(3))
        finally:
            log.close()
        report = verify(backend.audit_reader())
        assert report.ok and report.entries == 3, [str(p) for p in report.problems]
        assert [r["replica"] for r in backend.audit_reader().entries()] == ["", "", "signer-b"]
    finally:
        backend.close()


def test_the_shared_chain_commits_durably_whatever_the_database_default(
    pg_cluster: Any,
) -> None:
    """A database (or role) default of synchronous_commit = off must not make audit
    entries losable: the daemon's connections ask for it at connect, keeping any
    options the URL already has."""
    import psycopg

    from signer.storage.postgresql.db import Database

    url = pg_cluster.fresh_database(f"durable_{secrets.token_hex(4)}")
    name = url.rsplit("/", 1)[1]
    pg_cluster.psql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with psycopg.connect(url, password=pg_cluster.password) as plain:
        assert plain.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    db = Database(f"{url}?options=-c%20search_path%3Dpublic%2Cpg_catalog", pg_cluster.password)
    try:
        shown = db.run(
            lambda conn: conn.execute(
                "SELECT current_setting('synchronous_commit'), current_setting('search_path')"
            ).fetchone()
        )
        assert shown == ("on", "public,pg_catalog"), shown
    finally:
        db.close()
