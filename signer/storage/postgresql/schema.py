"""The PostgreSQL schema: the SQLite tables' columns, and the steps between its versions.

``schema_version`` holds the version reached; the steps are numbered as in
``signer.storage.schema`` (version 1: ``STATEMENTS``). Every replica opening the
database runs ``prepare``: nothing when the version is current, else the pending steps
in one transaction under an advisory lock (DDL is transactional in PostgreSQL: all the
steps or none), so replicas starting together migrate once.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors

from signer.errors import ConfigError
from signer.storage.schema import VERSION, NewerSchema, Report, describe

_LOCK = 0x5169_6E65_7200  # pg_advisory_xact_lock: one replica migrates the schema at a time

STATEMENTS = [
    """CREATE TABLE IF NOT EXISTS keys (
        key_id TEXT PRIMARY KEY,
        object_id TEXT NOT NULL UNIQUE,
        algorithm_name TEXT NOT NULL,
        label TEXT,
        role TEXT,
        repository TEXT,
        public_key_pem TEXT,
        tuf_key_json TEXT,
        state TEXT NOT NULL,
        quorum INTEGER,
        created_at DOUBLE PRECISION,
        created_by TEXT,
        retired_at DOUBLE PRECISION,
        destroyed_at DOUBLE PRECISION,
        certificate_pem TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS keys_role_repository ON keys (role, repository)",
    """CREATE TABLE IF NOT EXISTS tuf_versions (
        key_id TEXT NOT NULL,
        role TEXT NOT NULL,
        version BIGINT NOT NULL,
        payload_sha256 TEXT NOT NULL,
        expires TEXT NOT NULL,
        signed_by TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, role)
    )""",
    """CREATE TABLE IF NOT EXISTS signature_requests (
        request_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        payload BYTEA NOT NULL,
        payload_sha256 TEXT NOT NULL,
        requester TEXT NOT NULL,
        reason TEXT NOT NULL,
        approvals_required INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        fulfilled_at DOUBLE PRECISION
    )""",
    """CREATE TABLE IF NOT EXISTS approvals (
        request_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, approver)
    )""",
    """CREATE TABLE IF NOT EXISTS notary_keys (
        notary_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL UNIQUE,
        algorithm TEXT NOT NULL,
        public BYTEA NOT NULL,
        role TEXT NOT NULL,
        gun TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS buckets (
        name TEXT PRIMARY KEY,
        level DOUBLE PRECISION NOT NULL,
        stamp DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
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
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        id BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        key_id TEXT NOT NULL,
        body TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL
    )""",
]


# The steps, numbered as in signer.storage.schema.
STEPS: dict[int, list[str]] = {
    1: STATEMENTS,
    2: [
        "CREATE INDEX IF NOT EXISTS audit_signatures ON audit (key_id, time) "
        "WHERE outcome = 'allowed' AND operation IN ('sign', 'sign-raw') AND key_id != ''"
    ],
    3: ["ALTER TABLE audit ADD COLUMN IF NOT EXISTS replica TEXT NOT NULL DEFAULT ''"],
}
assert max(STEPS) == VERSION, "a schema step for every version"


def version(conn: psycopg.Connection[Any]) -> int:
    """The version the database is at: 0 for an empty one."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def prepare(conn: psycopg.Connection[Any], where: str) -> Report:
    """Apply the pending steps (in a transaction of the caller's); what was done.

    NewerSchema for a database a newer signerd migrated; a ConfigError naming
    ``signerd state migrate`` when this role may not change the schema."""
    found = version(conn)
    if found > VERSION:
        raise NewerSchema(where, found)
    report = Report(where, found, VERSION)
    if found == VERSION:
        return report
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    found = report.before = version(conn)  # another replica may have done it meanwhile
    if found > VERSION:
        raise NewerSchema(where, found)
    try:
        for step in range(found + 1, VERSION + 1):
            for statement in STEPS[step]:
                conn.execute(statement)
            report.applied.append(describe(step))
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (%s)", (VERSION,))
    except errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"the state at {where} is at schema version {found}, this signerd needs "
            f"{VERSION}, and its database role may not change the schema "
            f"({str(exc).strip().splitlines()[0]}): run `signerd state migrate` as one that may"
        ) from exc
    return report
