"""Schema versions and ``signerd state migrate`` on both backends (a real PostgreSQL)."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness import Daemon, create_token, free_port, signerd
from signer.storage import open_backend
from signer.storage.postgresql import schema as pg_schema
from signer.storage.schema import VERSION, NewerSchema
from signer.storage.sqlite import schema as sqlite_schema

# The audit table of the first release (before the replica column and the index).
_AUDIT_V1 = """CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, principal TEXT NOT NULL,
    operation TEXT NOT NULL, key_id TEXT NOT NULL, role TEXT NOT NULL,
    repository TEXT NOT NULL, payload_sha256 TEXT NOT NULL, outcome TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL, request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"""
_ENTRY = (1, 1.0, "alice", "sign", "k1", "targets", "", "00", "allowed", "OK", "", "", "", "h1")


def _columns(conn: Any, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def _old_sqlite_state(state: Path) -> None:
    """A state directory as the first release left it: no versions, audit without the
    replica column and the index, one entry in it."""
    state.mkdir(parents=True)
    with sqlite3.connect(state / "audit.db") as conn:
        conn.execute(_AUDIT_V1)
        conn.execute(f"INSERT INTO audit VALUES ({', '.join('?' for _ in _ENTRY)})", _ENTRY)
    for name in ("keys.db", "tuf.db", "quorum.db", "notary.db", "ratelimit.db"):
        sqlite_schema._baseline(state / name, name)
        with sqlite3.connect(state / name) as conn:
            conn.execute("PRAGMA user_version = 0")


# -- SQLite -----------------------------------------------------------------------------------


def test_sqlite_an_old_state_is_migrated_once_and_keeps_its_entries(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _old_sqlite_state(state)
    assert sqlite_schema.current(state) == 1

    done = signerd("state", "migrate", "--url", f"sqlite://{state}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"sqlite state {state}: schema version 1 -> version {VERSION}"
    assert [line.split(":")[0] for line in lines[1:]] == [
        f"  applied {v}" for v in range(2, VERSION + 1)
    ]
    assert sqlite_schema.versions(state) == {name: VERSION for name in sqlite_schema.FILES}
    with sqlite3.connect(state / "audit.db") as conn:
        assert "replica" in _columns(conn, "audit")
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "audit_signatures" in indexes
        assert conn.execute("SELECT seq, hash, replica FROM audit").fetchall() == [(1, "h1", "")]

    again = signerd("state", "migrate", "--url", f"sqlite://{state}")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"sqlite state {state}: schema version {VERSION}, nothing to migrate\n"


def test_sqlite_a_fresh_state_is_made_at_the_latest_version(tmp_path: Path) -> None:
    backend = open_backend(tmp_path / "state")
    try:
        assert backend.migration.before == 0  # type: ignore[attr-defined]
    finally:
        backend.close()
    assert sqlite_schema.current(tmp_path / "state") == VERSION
    # Opening it again does nothing.
    assert open_backend(tmp_path / "state").migration.applied == []  # type: ignore[attr-defined]


def test_sqlite_a_half_migrated_state_finishes(tmp_path: Path) -> None:
    """A crash between two files: the files still behind are migrated, the others kept."""
    state = tmp_path / "state"
    _old_sqlite_state(state)
    sqlite_schema._migrate_file(state / "keys.db", "keys.db")
    assert sqlite_schema.versions(state)["keys.db"] == VERSION
    assert sqlite_schema.current(state) == 1
    report = sqlite_schema.prepare(state)
    assert report.before == 1 and sqlite_schema.current(state) == VERSION


def test_sqlite_a_newer_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sqlite_schema.prepare(state)
    with sqlite3.connect(state / "tuf.db") as conn:
        conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(NewerSchema, match=f"schema version {VERSION + 1}, newer than"):
        open_backend(state)
    done = signerd("state", "migrate", "--url", f"sqlite://{state}")
    assert done.returncode == 2
    assert done.stderr == (
        f"signerd: the state at {state / 'tuf.db'} has schema version {VERSION + 1}, newer "
        f"than this signerd knows ({VERSION}): upgrade signerd, or point it at a state it made\n"
    )


def test_the_backends_schemas_never_import_the_migrate_command() -> None:
    """``migrations`` sits on top of both schemas: neither imports it (no import cycle,
    not even one hidden in a function), the versions come from ``signer.storage.schema``."""
    script = (
        "import sys, signer.storage.sqlite.schema, signer.storage.postgresql.schema, "
        "signer.storage.sqlite.backend, signer.storage.postgresql.backend, "
        "signer.storage.copy\n"
        "print('signer.storage.migrations' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def _refused_start(daemon: Daemon) -> str:
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) == 2
    log = daemon.log()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "newer than this signerd knows" in line]
    assert len(lines) == 1, log
    return lines[0]


def test_the_daemon_refuses_a_newer_sqlite_state(tmp_path: Path) -> None:
    daemon = Daemon(root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"))
    sqlite_schema.prepare(daemon.state)
    with sqlite3.connect(daemon.state / "audit.db") as conn:
        conn.execute(f"PRAGMA user_version = {VERSION + 3}")
    line = _refused_start(daemon)
    assert f"{daemon.state / 'audit.db'} has schema version {VERSION + 3}" in line


def test_the_daemon_migrates_an_old_sqlite_state_and_serves(tmp_path: Path) -> None:
    daemon = Daemon(root=tmp_path, port=free_port(), env=create_token(tmp_path / "hsm"))
    _old_sqlite_state(daemon.state)
    daemon.state.chmod(0o700)
    daemon.start()
    try:
        assert sqlite_schema.current(daemon.state) == VERSION
        assert f"schema version 1 -> version {VERSION}" in daemon.log()
    finally:
        daemon.stop()


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg(pg_cluster: Any) -> tuple[str, str, Any]:
    url = pg_cluster.fresh_database(f"m_{secrets.token_hex(6)}")
    return url, pg_cluster.password, pg_cluster


def _pg_conn(url: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, password=password, autocommit=True)


def _old_pg(url: str, password: str) -> None:
    """The database as the first release's replicas left it: version 1, one entry."""
    with _pg_conn(url, password) as conn, conn.transaction():
        for statement in pg_schema.STEPS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(f"INSERT INTO audit VALUES ({', '.join('%s' for _ in _ENTRY)})", _ENTRY)


def _pg_version(url: str, password: str) -> int:
    with _pg_conn(url, password) as conn:
        return pg_schema.version(conn)


def test_postgresql_an_old_database_is_migrated_once(pg: tuple[str, str, Any]) -> None:
    url, password, _cluster = pg
    _old_pg(url, password)
    env = {"SIGNER_DB_PASSWORD": password}
    done = signerd("state", "migrate", "--url", url, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{url}: schema version 1 -> version {VERSION}", lines
    assert len(lines) == VERSION  # one "applied" line for each step after 1
    assert _pg_version(url, password) == VERSION
    with _pg_conn(url, password) as conn:
        assert conn.execute("SELECT seq, hash, replica FROM audit").fetchall() == [(1, "h1", "")]
        row = conn.execute("SELECT to_regclass('audit_signatures') IS NOT NULL").fetchone()
        assert row == (True,)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)

    again = signerd("state", "migrate", "--url", url, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{url}: schema version {VERSION}, nothing to migrate\n"


def test_postgresql_migrate_with_a_config_and_a_password_file(
    pg: tuple[str, str, Any], tmp_path: Path
) -> None:
    url, password, _cluster = pg
    secret = tmp_path / "pw"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    config = tmp_path / "signer.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:1"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\n'
        f'[token]\nmodule = "m"\nlabel = "l"\n'
        f'[state]\ndir = "state"\nurl = "{url}"\npassword_file = "{secret}"\n'
    )
    done = signerd("state", "migrate", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{url}: schema empty -> version {VERSION}"
    assert _pg_version(url, password) == VERSION
    with_file = signerd("state", "migrate", "--url", url, "--password-file", str(secret))
    assert with_file.stdout == f"{url}: schema version {VERSION}, nothing to migrate\n"


def test_postgresql_a_password_in_the_url_is_refused(pg: tuple[str, str, Any]) -> None:
    url, password, _cluster = pg
    done = signerd("state", "migrate", "--url", url.replace("signer@", f"signer:{password}@"))
    assert done.returncode == 2
    assert done.stderr.startswith("signerd: no password in the URL")


def test_postgresql_replicas_opening_together_migrate_once(pg: tuple[str, str, Any]) -> None:
    url, password, _cluster = pg
    _old_pg(url, password)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            backend = open_backend(Path("/nonexistent"), url, password)
            reports.append(backend.migration)  # type: ignore[attr-defined]
            backend.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r.applied) for r in reports) == [0, 0, 0, VERSION - 1]
    assert _pg_version(url, password) == VERSION


def test_postgresql_a_newer_database_is_refused(pg: tuple[str, str, Any], tmp_path: Path) -> None:
    url, password, _cluster = pg
    open_backend(tmp_path, url, password).close()
    with _pg_conn(url, password) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (VERSION + 1,))
    with pytest.raises(NewerSchema):
        open_backend(tmp_path, url, password)
    done = signerd("state", "migrate", "--url", url, env={"SIGNER_DB_PASSWORD": password})
    assert done.returncode == 2
    assert done.stderr == (
        f"signerd: the state at {url} has schema version {VERSION + 1}, newer than this "
        f"signerd knows ({VERSION}): upgrade signerd, or point it at a state it made\n"
    )

    secret = tmp_path / "pw"
    secret.write_text(password)
    secret.chmod(0o600)
    daemon = Daemon(
        root=tmp_path / "d",
        port=free_port(),
        env=create_token(tmp_path / "hsm"),
        state_options=f'url = "{url}"\npassword_file = "{secret}"',
    )
    daemon.root.mkdir()
    line = _refused_start(daemon)
    assert line.endswith(
        f"the state at {url} has schema version {VERSION + 1}, newer than this signerd "
        f"knows ({VERSION}): upgrade signerd, or point it at a state it made"
    ), line
