"""``signerd state copy``: one host's SQLite state moves into PostgreSQL (a real one)."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from securesystemslib.formats import encode_canonical

from harness import Daemon, create_token, free_port, signerd
from signer.audit.log import AuditEvent, AuditLog, Outcome
from signer.storage import open_backend
from signer.storage.copy import TABLES, copy_state
from signer.storage.records import (
    KeyRecord,
    NotaryKey,
    RequestState,
    SignatureRequest,
    VersionClaim,
)
from signer_client.errors import ClientError


@pytest.fixture
def pg(pg_cluster: Any) -> tuple[str, str]:
    return pg_cluster.fresh_database(f"copy_{secrets.token_hex(6)}"), pg_cluster.password


def _rows(conn: Any, table: str, columns: tuple[str, ...], order: str) -> list[tuple[Any, ...]]:
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


def _fill(state: Path) -> None:
    """A row (or a few) in every table, through the stores."""
    backend = open_backend(state)
    keys, versions, quorum = backend.keys(), backend.versions(), backend.quorum()
    notary, buckets = backend.notary(), backend.buckets()
    audit = AuditLog(backend.audit())
    try:
        for n in range(3):
            keys.add(
                KeyRecord(
                    key_id=f"{n:064x}",
                    object_id=f"obj{n}",
                    algorithm_name="ed25519",
                    label=f"k{n}",
                    role="targets",
                    repository="",
                    public_key_pem="PEM",
                    tuf_key_json="{}",
                    quorum=n == 2,
                    created_at=1000.0 + n,
                    certificate_pem="CERT" if n == 1 else "",
                )
            )
        versions.claim(VersionClaim(f"{0:064x}", "targets", 7, "ab" * 32, "2030", "alice"), 5.5)
        payload = b"\x00\x01binary\xff"
        request = SignatureRequest(
            "rq1", f"{2:064x}", payload, hashlib.sha256(payload).hexdigest(), "alice", "why",
            2, RequestState.PENDING, 10.0, 1e10,
        )  # fmt: skip
        quorum.add(request)
        quorum.approve("rq1", "carol", 11.0, lambda r: None)
        notary.add(NotaryKey("n1", f"{1:064x}", "ecdsa", b"\x04public", "targets", "gun"), 12.0)
        assert buckets.take("bob", 1.0, 5.0, 3.0) == 0.0
        for n in range(25):
            audit.record(AuditEvent("alice", "sign", Outcome.ALLOWED, key_id=f"{n % 3:064x}"))
        audit.chain.add_checkpoint(10, "h", 13.0, "ak", "body", "sig")
    finally:
        for store in (keys, versions, quorum, notary, buckets):
            store.close()
        audit.close()
        backend.close()


def test_copy_moves_every_table_row_for_row(tmp_path: Path, pg: tuple[str, str]) -> None:
    url, password = pg
    state = tmp_path / "state"
    _fill(state)
    report = copy_state(state, url, password)
    assert report.counts["keys"] == 3 and report.counts["audit"] == 25
    assert all(report.counts[t] >= 1 for _f, t, _c, _o in TABLES), report.counts
    with psycopg.connect(url, password=password) as target:
        for file, table, columns, order in TABLES:
            with sqlite3.connect(state / file) as source:
                assert _rows(target, table, columns, order) == _rows(
                    source, table, columns, order
                ), table
    lines = report.lines()
    assert lines[0] == f"copied sqlite://{state} to {url}:"
    assert "25 audit entries" in [line.strip() for line in lines]

    # The copied state works through the stores: the claim refuses a rollback, the
    # request takes its second approval, the notary map and the buckets carried over.
    backend = open_backend(tmp_path, url, password)
    try:
        versions = backend.versions()
        assert versions.claim(
            VersionClaim(f"{0:064x}", "targets", 6, "cd" * 32, "2030", "bob"), 20.0
        ) == (7, "ab" * 32)
        approved = backend.quorum().approve("rq1", "dave", 21.0, lambda r: None)
        assert approved is not None and approved.state is RequestState.APPROVED
        notary_key = backend.notary().get("n1")
        assert notary_key is not None and notary_key.public == b"\x04public"
        assert backend.buckets().take("bob", 0.001, 5.0, 3.0) > 0  # 2 left, not a fresh 5
    finally:
        backend.close()


def test_copy_refuses_a_non_empty_target_and_changes_nothing(
    tmp_path: Path, pg: tuple[str, str]
) -> None:
    url, password = pg
    _fill(tmp_path / "a")
    copy_state(tmp_path / "a", url, password)
    _fill(tmp_path / "b")
    done = signerd(
        "state", "copy", "--from", f"sqlite://{tmp_path / 'b'}", "--to", url,
        env={"SIGNER_DB_PASSWORD": password},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"signerd: the target {url} is not empty (3 keys, "), done.stderr
    assert done.stderr.count("\n") == 1
    with psycopg.connect(url, password=password) as target:
        assert target.execute("SELECT count(*) FROM audit").fetchone() == (25,)


def test_copy_refuses_a_missing_or_old_source(tmp_path: Path, pg: tuple[str, str]) -> None:
    url, password = pg
    env = {"SIGNER_DB_PASSWORD": password}
    done = signerd("state", "copy", "--from", f"sqlite://{tmp_path}/none", "--to", url, env=env)
    assert done.returncode == 2
    missing = tmp_path / "none"
    assert (
        done.stderr == f"signerd: no signerd state in {missing} (no keys.db and audit.db there)\n"
    )
    done = signerd("state", "copy", "--from", str(tmp_path), "--to", url, env=env)
    assert done.returncode == 2 and "sqlite:///PATH/TO/STATE_DIR" in done.stderr
    state = tmp_path / "state"
    _fill(state)
    with sqlite3.connect(state / "tuf.db") as conn:
        conn.execute("PRAGMA user_version = 1")
    done = signerd("state", "copy", "--from", f"sqlite://{state}", "--to", url, env=env)
    assert done.returncode == 2
    assert f"run `signerd state migrate --url sqlite://{state}` first" in done.stderr
    with psycopg.connect(url, password=password) as target:  # the source is checked first
        assert target.execute("SELECT to_regclass('keys')").fetchone() == (None,)


POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign"]

[[rules]]
principals = ["bob"]
operations = ["sign-raw"]
keys = { roles = ["targets"] }

[[rules]]
principals = ["alice"]
operations = ["sign", "read"]
keys = { roles = ["root"] }

[[rules]]
principals = ["carol", "dave"]
operations = ["approve"]
keys = { roles = ["root"] }

[quorum]
approvals = 2
window_seconds = 3600

[rate_limits]
"bob" = { rate = 0.001, burst = 3 }
"""
CHECKPOINTS = "[audit]\ncheckpoint_entries = 10\ncheckpoint_seconds = 0.3\n"


def _tuf(version: int, kind: str = "targets") -> bytes:
    signed = {
        "_type": kind,
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
    }
    if kind == "targets":
        signed["targets"] = {}
    else:
        signed.update(consistent_snapshot=True, keys={}, roles={})
    return str(encode_canonical(signed)).encode()


def _checkpoints(state: Path) -> int:
    with sqlite3.connect(state / "audit.db") as conn:
        return int(conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0])


def test_a_host_moves_to_postgresql_and_its_daemon_signs_with_its_old_keys(
    tmp_path: Path, pg: tuple[str, str]
) -> None:
    url, password = pg
    secret = tmp_path / "db-password"
    secret.write_text(password)
    secret.chmod(0o600)
    clients = ["admin", "alice", "bob", "carol", "dave"]
    daemon = Daemon(
        root=tmp_path / "host",
        port=free_port(),
        env=create_token(tmp_path / "hsm"),
        clients=clients,
        policy=POLICY,
        extra_config=CHECKPOINTS,
    )
    daemon.root.mkdir()
    root_payload = _tuf(1, "root")
    digest = hashlib.sha256(root_payload).hexdigest()
    daemon.start()
    try:
        with daemon.client("admin") as admin, daemon.client("bob") as bob:
            key = admin.create_key("repo", "ecdsa-sha2-nistp256", role="targets")
            root = admin.create_key("root-1", "ecdsa-sha2-nistp256", role="root", quorum=True)
            for version in range(1, 13):
                admin.sign(key.key_id, _tuf(version))
            for _ in range(3):
                bob.sign(key.key_id, b"raw")
            with pytest.raises(ClientError) as limited:
                bob.sign(key.key_id, b"raw")
            assert limited.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with daemon.client("alice") as alice, daemon.client("carol") as carol:
            rid = alice.request_signature(root.key_id, root_payload, "rotation").request_id
            carol.approve(rid, digest)
        deadline = time.monotonic() + 20
        while _checkpoints(daemon.state) < 2:
            assert time.monotonic() < deadline, "no checkpoints written"
            time.sleep(0.1)
    finally:
        daemon.stop()
    assert signerd("audit", "verify", "--state-dir", str(daemon.state)).returncode == 0

    done = signerd(
        "state", "copy", "--from", f"sqlite://{daemon.state}", "--to", url,
        "--password-file", str(secret),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"copied sqlite://{daemon.state} to {url}:" in done.stdout

    # The same host, its config now naming the database; the same token and PKI.
    daemon.state_options = f'url = "{url}"\npassword_file = "{secret}"\nreplica = "host"'
    daemon.write_config()
    verified = signerd("audit", "verify", "--config", str(daemon.config_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK:" in verified.stdout, verified.stdout

    daemon.start()
    try:
        with daemon.client("admin") as admin, daemon.client("bob") as bob:
            assert [k.key_id for k in admin.list_keys(role="targets")] == [key.key_id]
            assert admin.sign(key.key_id, _tuf(13)).signature  # a key made before the copy
            with pytest.raises(ClientError) as rollback:  # the versions came along
                admin.sign(key.key_id, _tuf(12))
            assert rollback.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(ClientError) as limited:  # and bob's spent bucket
                bob.sign(key.key_id, b"raw")
            assert limited.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with daemon.client("alice") as alice, daemon.client("dave") as dave:
            assert sorted(dave.approve(rid, digest).approvers) == ["carol", "dave"]
            assert alice.sign(root.key_id, root_payload, request_id=rid).signature
    finally:
        daemon.stop()
    # The chain goes on from the copied tip and still verifies, checkpoints and all.
    verified = signerd("audit", "verify", "--config", str(daemon.config_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    copied = int(done.stdout.split(" audit entries")[0].split()[-1])
    with psycopg.connect(url, password=password) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone() > (copied,)
