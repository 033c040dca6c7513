"""``signerd state copy``: move one host's SQLite state into an empty PostgreSQL database.

Everything moves, row for row, as the SQLite files hold it: the key registry, the TUF
version claims (so a rollback refused before is refused after), quorum requests and
their approvals, the notary key map, the rate-limit levels, the audit chain (every
entry with its hashes, unchanged) and its signed checkpoints. The keys themselves stay
in the token: the replicas use the same one.

The copy is one PostgreSQL transaction: it checks that the target is empty (under the
chain's and the schema's locks, so a replica started meanwhile cannot slip in), writes
every table with COPY, compares the row counts and the chain's tip with the source, and
commits; any failure leaves the target as it was. The source is only read. Stop the
daemon on the source host first: if its audit chain grows during the copy, the copy is
rolled back and says so.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from signer.errors import ConfigError
from signer.storage.interfaces import AUDIT_COLUMNS
from signer.storage.schema import VERSION
from signer.storage.sqlite import schema as sqlite_schema
from signer.storage.sqlite.keys import COLUMNS as KEY_COLUMNS

# (file, table, columns, order): every table of the state, in both backends alike.
TABLES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("keys.db", "keys", KEY_COLUMNS, "created_at, key_id"),
    (
        "tuf.db",
        "tuf_versions",
        ("key_id", "role", "version", "payload_sha256", "expires", "signed_by", "time"),
        "key_id, role",
    ),
    (
        "quorum.db",
        "signature_requests",
        (
            "request_id",
            "key_id",
            "payload",
            "payload_sha256",
            "requester",
            "reason",
            "approvals_required",
            "state",
            "created_at",
            "expires_at",
            "fulfilled_at",
        ),
        "created_at, request_id",
    ),
    ("quorum.db", "approvals", ("request_id", "approver", "time"), "request_id, approver"),
    (
        "notary.db",
        "notary_keys",
        ("notary_id", "key_id", "algorithm", "public", "role", "gun", "created_at"),
        "created_at, notary_id",
    ),
    ("ratelimit.db", "buckets", ("name", "level", "stamp"), "name"),
    ("audit.db", "audit", AUDIT_COLUMNS, "seq"),
    (
        "audit.db",
        "audit_checkpoints",
        ("id", "seq", "hash", "time", "key_id", "body", "signature"),
        "id",
    ),
)

# What each table holds, as the report names it.
NOUNS = {
    "keys": "keys",
    "tuf_versions": "TUF version claims",
    "signature_requests": "quorum requests",
    "approvals": "approvals",
    "notary_keys": "notary keys",
    "buckets": "rate-limit buckets",
    "audit": "audit entries",
    "audit_checkpoints": "audit checkpoints",
}

_CHAIN_LOCK = 0x5169_6E65_7201  # the audit chain's (signer.storage.postgresql.audit)
_SCHEMA_LOCK = 0x5169_6E65_7200


@dataclass
class CopyReport:
    source: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)
    tip: tuple[int, str] | None = None

    def lines(self) -> list[str]:
        lines = [f"copied {self.source} to {self.target}:"]
        lines += [f"  {n:>8} {NOUNS[table]}" for table, n in self.counts.items()]
        if self.tip is not None:
            lines.append(f"  audit chain tip: seq {self.tip[0]}, hash {self.tip[1]}")
        lines.append(f"verify it: signerd audit verify --config <a config naming {self.target}>")
        return lines


def source_dir(url: str) -> Path:
    """The state directory of ``sqlite:///PATH``."""
    if not url.startswith("sqlite://") or not url[len("sqlite://") :].startswith("/"):
        raise ConfigError(f"--from {url!r}: give the source state as sqlite:///PATH/TO/STATE_DIR")
    return Path(url[len("sqlite://") :])


def copy_state(
    state_dir: Path,
    url: str,
    password: str | None,
    progress: Callable[[str], None] | None = None,
) -> CopyReport:
    """Copy the SQLite state in ``state_dir`` into the empty PostgreSQL database ``url``."""
    from signer.storage.postgresql.backend import PostgresBackend

    _check_source(state_dir)
    target = PostgresBackend(url, password)  # creates (or migrates) the schema
    try:
        report = CopyReport(f"sqlite:///{str(state_dir).lstrip('/')}", target.db.where)

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
            _check_empty(conn, target.db.where)
            tip = _source_tip(state_dir)
            for file, table, columns, order in TABLES:
                written = _copy_table(state_dir / file, table, columns, order, conn)
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                if row is None or int(row[0]) != written:
                    raise ConfigError(f"copying {table}: {written} rows read, {row} written")
                report.counts[table] = written
                if progress is not None:
                    progress(f"{table}: {written} rows")
            copied = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            got = copied.fetchone()
            report.tip = (int(got[0]), str(got[1])) if got else None
            if _source_tip(state_dir) != tip or report.tip != tip:
                raise ConfigError(
                    f"the audit chain in {state_dir} changed during the copy: stop the daemon "
                    "on that host and copy again (nothing was written)"
                )

        target.db.run(work)
        return report
    finally:
        target.close()


def _check_source(state_dir: Path) -> None:
    found = sqlite_schema.versions(state_dir)
    if not (state_dir / "keys.db").exists() or not (state_dir / "audit.db").exists():
        raise ConfigError(f"no signerd state in {state_dir} (no keys.db and audit.db there)")
    old = {name: v for name, v in found.items() if v != VERSION}
    if any(v > VERSION for v in old.values()):
        sqlite_schema.current(state_dir)  # raises NewerSchema, naming the file
    if old:
        raise ConfigError(
            f"the state in {state_dir} is at schema version {min(old.values())}, this signerd "
            f"copies version {VERSION}: run `signerd state migrate --url sqlite://{state_dir}` "
            "first"
        )


def _check_empty(conn: psycopg.Connection[Any], where: str) -> None:
    held = []
    for _file, table, _columns, _order in TABLES:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        if row and int(row[0]):
            held.append(f"{int(row[0])} {NOUNS[table]}")
    if held:
        raise ConfigError(
            f"the target {where} is not empty ({', '.join(held)}): state copy fills an "
            "empty database only (a fresh one, or one it can drop and re-create)"
        )


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _source_tip(state_dir: Path) -> tuple[int, str] | None:
    conn = _readonly(state_dir / "audit.db")
    try:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else None


def _copy_table(
    path: Path, table: str, columns: tuple[str, ...], order: str, conn: psycopg.Connection[Any]
) -> int:
    """Stream ``table`` of the SQLite file ``path`` into the same table: rows written."""
    if not path.exists():
        return 0
    source = _readonly(path)
    written = 0
    try:
        source.execute("BEGIN")  # one snapshot of the file
        rows = source.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        copy = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with conn.cursor() as cursor, cursor.copy(copy) as out:
            for row in rows:
                out.write_row(row)
                written += 1
        source.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    finally:
        source.close()
    return written
