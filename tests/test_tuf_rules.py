"""TUF payload rules: role binding, maximum expiry, no rollback, no fork, raw is separate."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows, sha256, tuf_payload, verify, wait_for

from harness import Daemon, running_daemon
from signer.audit.verify import verify as verify_log
from signer.errors import InvalidArgument
from signer.policy.tuf import parse_tuf
from signer_client import ClientError

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read"]

[[rules]]
principals = ["alice", "bob"]
operations = ["sign", "read"]

[[rules]]
principals = ["bob"]
operations = ["sign-raw"]

[tuf]
max_expiry_days = { root = 365, targets = 90, snapshot = 7, timestamp = 1, "targets/*" = 30 }
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    clients = ["admin", "alice", "bob", "mallory"]
    with running_daemon(tmp_path_factory.mktemp("tuf"), policy=POLICY, clients=clients) as d:
        yield d


@pytest.fixture(scope="module")
def keys(served: Daemon) -> dict[str, Any]:
    with served.client("admin") as admin:
        return {
            role: admin.create_key(f"{role}-key", role=role)
            for role in ("root", "targets", "snapshot", "timestamp", "targets/releases")
        }


@pytest.fixture(scope="module")
def alice(served: Daemon) -> Iterator[Any]:
    with served.client("alice") as client:
        yield client


def _refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


def test_canonical_detection() -> None:
    assert parse_tuf(tuf_payload("targets")) is not None
    assert parse_tuf(b'{"_type": "targets"}') is None  # not canonical (space)
    assert parse_tuf(b'{"version":1}') is None  # no _type: not TUF
    assert parse_tuf(b'{"_type":"targets","x":1.5}') is None  # floats are not canonical
    assert parse_tuf(b"\xff\xfe") is None  # not JSON at all: raw
    assert parse_tuf(b"{not json") is None
    # JSON that readers may read differently is refused, not taken for raw bytes.
    for bad in (
        b'{"_type":"targets","_type":"root"}',
        b'{"_type":"targets","x":"\\ud800"}',
        b'{"_type":"targets","x":"\xff"}',
        b'{"_type":"targets","x":NaN}',
    ):
        with pytest.raises(InvalidArgument):
            parse_tuf(bad)


def test_each_key_signs_its_own_role(alice: Any, keys: dict[str, Any]) -> None:
    for role in ("root", "targets", "snapshot", "timestamp"):
        payload = tuf_payload(role, 1, days=0.5)
        verify(keys[role], payload, alice.sign(keys[role].key_id, payload).signature)


def test_root_payload_to_targets_key_is_refused(
    served: Daemon, alice: Any, keys: dict[str, Any]
) -> None:
    key_id = keys["targets"].key_id
    root = tuf_payload("root", 1, days=10)
    message = _refused(lambda: alice.sign(key_id, root))
    assert message == (
        f"key {key_id} is bound to role 'targets' and signs only 'targets' metadata; "
        "this payload is 'root' metadata"
    )
    row = audit_rows(served.state, "payload_sha256 = ?", (sha256(root),))[-1]
    assert (row["principal"], row["outcome"], row["key_id"], row["role"]) == (
        "alice", "denied", key_id, "targets",
    )  # fmt: skip
    for kind in ("snapshot", "timestamp"):
        _refused(lambda kind=kind: alice.sign(key_id, tuf_payload(kind, 1, days=0.5)))


def test_delegated_role_signs_targets_metadata_only(alice: Any, keys: dict[str, Any]) -> None:
    key = keys["targets/releases"]
    payload = tuf_payload("targets", 1, days=20)
    verify(key, payload, alice.sign(key.key_id, payload).signature)
    message = _refused(lambda: alice.sign(key.key_id, tuf_payload("root", 2, days=20)))
    assert "bound to role 'targets/releases' and signs only 'targets' metadata" in message


def test_over_long_expiry_is_refused(alice: Any, keys: dict[str, Any]) -> None:
    snapshot = keys["snapshot"].key_id
    message = _refused(lambda: alice.sign(snapshot, tuf_payload("snapshot", 5, days=8)))
    assert "snapshot metadata may expire at most 7 days ahead" in message
    assert message.startswith("expires ") and "8.0 days ahead" in message
    alice.sign(snapshot, tuf_payload("snapshot", 5, days=6.9))
    # Delegated roles: the glob "targets/*" (30) applies, not "targets" (90).
    delegated = keys["targets/releases"].key_id
    assert "at most 30 days" in _refused(
        lambda: alice.sign(delegated, tuf_payload("targets", 50, days=31))
    )
    timestamp = keys["timestamp"].key_id
    assert "at most 1 days" in _refused(
        lambda: alice.sign(timestamp, tuf_payload("timestamp", 50, days=1.5))
    )


def test_forged_versions_are_refused(served: Daemon, alice: Any, keys: dict[str, Any]) -> None:
    key = keys["targets"]
    v5 = tuf_payload("targets", 5, days=30)
    first = alice.sign(key.key_id, v5)
    verify(key, v5, first.signature)
    # Rollback: a lower version than already signed.
    message = _refused(lambda: alice.sign(key.key_id, tuf_payload("targets", 4, days=30)))
    assert message == (
        f"targets version 4 is lower than version 5, already signed with key {key.key_id}: "
        "versions never go back"
    )
    # Fork: different content at the same version.
    forged = tuf_payload("targets", 5, days=29)
    assert forged != v5
    message = _refused(lambda: alice.sign(key.key_id, forged))
    assert "version 5 was already signed" in message and "needs a new version" in message
    # The same bytes again are fine (a retry), as is the next version.
    verify(key, v5, alice.sign(key.key_id, v5).signature)
    alice.sign(key.key_id, tuf_payload("targets", 6, days=30))
    # State is per key: another targets key starts afresh.
    with served.client("admin") as admin:
        fresh = admin.create_key("targets-2", role="targets")
    alice.sign(fresh.key_id, tuf_payload("targets", 1, days=30))
    conn = sqlite3.connect(served.state / "tuf.db")
    (version,) = conn.execute(
        "SELECT version FROM tuf_versions WHERE key_id = ?", (key.key_id,)
    ).fetchone()
    conn.close()
    assert version == 6


def test_concurrent_forks_at_one_version_sign_once(served: Daemon, keys: dict[str, Any]) -> None:
    """Eight clients race different payloads at one version: exactly one is signed."""
    key_id = keys["root"].key_id
    payloads = [tuf_payload("root", 40, days=100 + i) for i in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(payloads))

    def run(payload: bytes) -> None:
        with served.client("alice") as client:
            barrier.wait()
            try:
                client.sign(key_id, payload)
                outcomes.append("ok")
            except ClientError as exc:
                outcomes.append(exc.code.name)

    threads = [threading.Thread(target=run, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["PERMISSION_DENIED"] * 7 + ["ok"]


def test_batch_cannot_fork_either(alice: Any, keys: dict[str, Any]) -> None:
    key_id = keys["timestamp"].key_id
    a, b = tuf_payload("timestamp", 70, days=0.5), tuf_payload("timestamp", 70, days=0.6)
    results = alice.sign_batch(key_id, [a, b, a])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.code == grpc.StatusCode.PERMISSION_DENIED


def test_raw_signing_is_a_separate_grant(alice: Any, keys: dict[str, Any], served: Daemon) -> None:
    key = keys["targets"]
    raw = b"release artefact manifest"
    assert "'sign-raw'" in _refused(lambda: alice.sign(key.key_id, raw))
    with served.client("bob") as bob:
        verify(key, raw, bob.sign(key.key_id, raw).signature)
        bob.sign_digest(key.key_id, hashlib.sha256(raw).digest())
        # A raw grant does not lift the TUF rules from TUF payloads.
        assert "signs only 'targets' metadata" in _refused(
            lambda: bob.sign(key.key_id, tuf_payload("root", 1, days=1))
        )
        # Nor does JSON with a duplicate key slip through as raw bytes: a last-wins
        # reader sees targets metadata the TUF rules never checked.
        payload = tuf_payload("targets", 1, days=3650)
        doubled = b'{"_type":"root",' + payload[1:]
        assert "duplicate key '_type'" in _refused(
            lambda: bob.sign(key.key_id, doubled), grpc.StatusCode.INVALID_ARGUMENT
        )


def test_unauthorised_principal_learns_nothing_about_versions(
    served: Daemon, keys: dict[str, Any]
) -> None:
    key_id = keys["targets"].key_id
    with served.client("mallory") as mallory:
        for payload in (
            tuf_payload("targets", 1),
            tuf_payload("root", 1),
            tuf_payload("targets", 6),
        ):
            message = _refused(lambda payload=payload: mallory.sign(key_id, payload))
            assert (
                message == f"mallory may not sign with key {key_id}: no policy rule grants 'sign'"
            )


def test_malformed_tuf_fields_are_invalid(alice: Any, keys: dict[str, Any]) -> None:
    key_id = keys["targets"].key_id
    no_expiry = b'{"_type":"targets","version":7}'
    assert "expires is missing" in _refused(
        lambda: alice.sign(key_id, no_expiry), grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_version = b'{"_type":"targets","expires":"2030-01-01T00:00:00Z","version":0}'
    assert "version must be an integer from 1 to 2**63-1" in _refused(
        lambda: alice.sign(key_id, bad_version), grpc.StatusCode.INVALID_ARGUMENT
    )
    short_date = b'{"_type":"targets","expires":"2030-1-01T00:00:00Z","version":7}'
    assert "is not a TUF date" in _refused(
        lambda: alice.sign(key_id, short_date), grpc.StatusCode.INVALID_ARGUMENT
    )


def test_two_workers_never_sign_two_payloads_at_one_version(tmp_path: Any) -> None:
    """The version state is shared by the worker processes: forks are refused across them."""
    with running_daemon(tmp_path, policy=POLICY, clients=["admin", "alice"], workers=2) as d:
        wait_for(lambda: "worker 0 INFO" in d.log() and "worker 1 INFO" in d.log())
        with d.client("admin") as admin:
            key_id = admin.create_key("shared", role="snapshot").key_id
        clients = [d.client("alice") for _ in range(8)]  # separate connections: both workers
        try:
            for version in (1, 2, 3):
                payloads = [tuf_payload("snapshot", version, days=1 + i / 10) for i in range(8)]
                outcomes = _race(clients, key_id, payloads)
                assert sorted(outcomes) == ["PERMISSION_DENIED"] * 7 + ["ok"], version
        finally:
            for c in clients:
                c.close()
        assert "Traceback" not in d.log()
    # Both workers signed a last audit checkpoint at shutdown, with one audit key.
    conn = sqlite3.connect(d.state / "keys.db")
    assert conn.execute("SELECT COUNT(*) FROM keys WHERE role = 'audit'").fetchone() == (1,)
    conn.close()
    assert verify_log(d.state / "audit.db", d.state / "keys.db").checkpoints >= 1


def _race(clients: list[Any], key_id: str, payloads: list[bytes]) -> list[str]:
    """Each client signs its payload at the same instant; returns the outcomes."""
    outcomes: list[str] = []
    barrier = threading.Barrier(len(clients))

    def run(client: Any, payload: bytes) -> None:
        barrier.wait()
        try:
            client.sign(key_id, payload)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.code.name)

    threads = [threading.Thread(target=run, args=cp) for cp in zip(clients, payloads, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes
