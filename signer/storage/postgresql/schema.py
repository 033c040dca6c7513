"""The PostgreSQL schema: the SQLite tables' columns, created once (under a lock)."""

from __future__ import annotations

from typing import Any

import psycopg

VERSION = 1
_LOCK = 0x5169_6E65_7200  # pg_advisory_xact_lock: one replica creates the schema at a time

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


def create(conn: psycopg.Connection[Any]) -> None:
    """Create what is missing (in a transaction of the caller's), recording the version."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    for statement in STATEMENTS:
        conn.execute(statement)
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    if row is None or row[0] is None:
        conn.execute("INSERT INTO schema_version VALUES (%s)", (VERSION,))
