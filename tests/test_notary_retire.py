"""Retiring notary-server's keys once rotated away or idle: the command and the schedule.

A real daemon; keys are made and used through the notary-signer API as notary-server
does (CreateKey, Sign), then ``signerd notary retire-unused`` (a separate process on the
daemon's state) and the daemon's own schedule retire what nobody uses any more.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows

from harness import Daemon, running_daemon
from signer.notary import signer_pb2 as pb
from signer.notary import signer_pb2_grpc as pb_grpc
from signer.notary.retire import PRINCIPAL, plan
from signer.notary.store import NotaryKey
from signer.registry import KeyRecord

ROOT = Path(__file__).resolve().parent.parent
NOTARY = "notary-server.example.org"
POLICY = f"""
[[rules]]
principals = ["{NOTARY}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["read", "audit"]
"""


def content(version: int, kind: str = "Timestamp") -> bytes:
    signed = {"_type": kind, "expires": "2030-01-01T00:00:00Z", "meta": {}, "version": version}
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


class Notary:
    """notary-server's side of the notary-signer API."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.keys = pb_grpc.KeyManagementStub(channel)
        self.signer = pb_grpc.SignerStub(channel)

    def create(self, gun: str, role: str = "timestamp") -> str:
        request = pb.CreateKeyRequest(algorithm="ecdsa", gun=gun, role=role)
        return str(self.keys.CreateKey(request, timeout=10).keyInfo.keyID.ID)

    def sign(self, notary_id: str, version: int, kind: str = "Timestamp") -> None:
        request = pb.SignatureRequest(keyID=pb.KeyID(ID=notary_id), content=content(version, kind))
        self.signer.Sign(request, timeout=10)


def state_of(daemon: Daemon, notary_id: str) -> str:
    import sqlite3

    with sqlite3.connect(daemon.state / "notary.db") as db:
        (key_id,) = db.execute(
            "SELECT key_id FROM notary_keys WHERE notary_id = ?", (notary_id,)
        ).fetchone()
    with daemon.client("admin") as admin:
        key = admin.get_key(key_id)
    return {1: "active", 2: "retired", 3: "destroyed"}[key.state]


def retire_unused(daemon: Daemon, *args: str) -> str:
    env = {
        "PYTHONPATH": f"{ROOT}:{ROOT / 'clients'}",
        "PATH": "/usr/bin:/bin",
        **daemon.env,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signer.cli",
            "notary",
            "retire-unused",
            "--config",
            str(daemon.config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return result.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path, policy=POLICY, clients=["admin", NOTARY]) as daemon:
        yield daemon


def test_command_retires_superseded_and_idle_keys(served: Daemon) -> None:
    with served.channel(NOTARY) as channel:
        notary = Notary(channel)
        old = notary.create("example.com/app")
        notary.sign(old, 1)
        new = notary.create("example.com/app")  # notary-server rotated the timestamp key
        notary.sign(new, 2)
        never_used = notary.create("example.com/app", "snapshot")  # alone in its role
        gone = notary.create("example.com/deleted")  # a repository deleted on the server
        notary.sign(gone, 1)

    listed = retire_unused(served, "--days", "0", "--dry-run")
    assert f"would retire {old}" in listed and "superseded" in listed
    for kept in (new, never_used, gone):
        assert f"retire {kept}" not in listed
    assert state_of(served, old) == "active"  # a dry run changes nothing

    # Still in use within --days: nothing goes.
    assert "0 key(s) retired" in retire_unused(served, "--days", "30")

    out = retire_unused(served, "--days", "0")
    assert f"retired {old}" in out and "1 key(s) retired" in out
    assert state_of(served, old) == "retired" and state_of(served, new) == "active"
    rows = audit_rows(served.state, "principal = ? AND operation = 'retire'", (PRINCIPAL,))
    assert len(rows) == 1 and old in rows[0]["detail"] and rows[0]["outcome"] == "allowed"

    # Idle repositories only when asked: then every key of a GUN nobody signs for goes.
    out = retire_unused(served, "--days", "0", "--idle-repositories")
    assert gone in out and new in out and never_used in out
    assert state_of(served, gone) == "retired"
    # A retired key no longer signs for notary-server.
    with served.channel(NOTARY) as channel, pytest.raises(grpc.RpcError) as info:
        Notary(channel).sign(gone, 2)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_daemon_retires_on_a_schedule(tmp_path: Path) -> None:
    extra = "[notary]\nretire_unused_days = 0.00001\nretire_interval_seconds = 0.3\n"
    with running_daemon(
        tmp_path, policy=POLICY, clients=["admin", NOTARY], extra_config=extra
    ) as daemon:
        with daemon.channel(NOTARY) as channel:
            notary = Notary(channel)
            old = notary.create("example.com/app", "snapshot")
            notary.sign(old, 1, "Snapshot")
            time.sleep(1.2)  # older than retire_unused_days
            new = notary.create("example.com/app", "snapshot")
            notary.sign(new, 2, "Snapshot")
        deadline = time.time() + 10
        while state_of(daemon, old) != "retired" and time.time() < deadline:
            time.sleep(0.2)
        assert state_of(daemon, old) == "retired"
        assert state_of(daemon, new) == "active"
        assert audit_rows(daemon.state, "principal = ? AND operation = 'retire'", (PRINCIPAL,))


def _pair(key_id: str, gun: str, role: str, created: float) -> tuple[NotaryKey, KeyRecord]:
    record = KeyRecord(
        key_id, key_id, "ecdsa-sha2-nistp256", "", role, gun, "", "", created_at=created
    )
    return NotaryKey("n-" + key_id, key_id, "ecdsa", b"", role, gun), record


def test_plan_rules() -> None:
    day = 86400.0
    now = 100 * day
    keys = [
        _pair("a1", "g", "timestamp", 1 * day),
        _pair("a2", "g", "timestamp", 2 * day),
        _pair("a3", "g", "timestamp", 3 * day),
        _pair("b1", "idle", "snapshot", 1 * day),
    ]
    used = {"a1": 50 * day, "a2": 60 * day, "a3": 99 * day, "b1": 10 * day}
    # a1 and a2 were superseded by keys that signed after them; a3 is the newest
    assert [c.key.key_id for c in plan(keys, used, now, 30)] == ["a1", "a2"]
    # a2 signed 40 days ago: within 45 days it stays; a1 (50 days ago) still goes
    assert [c.key.key_id for c in plan(keys, used, now, 45)] == ["a1"]
    assert [c.key.key_id for c in plan(keys, used, now, 55)] == []
    assert [c.key.key_id for c in plan(keys, used, now, 30, idle_repositories=True)] == [
        "a1",
        "a2",
        "b1",
    ]
    # a newer key that never signed supersedes nothing
    assert plan(keys[:2], {"a1": 10 * day}, now, 30) == []
