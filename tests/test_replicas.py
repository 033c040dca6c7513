"""Two signerd replicas on one token and one PostgreSQL database behave as one signer."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from securesystemslib.formats import encode_canonical

from harness import Daemon, create_token, free_port
from signer_api.v1 import signer_pb2 as pb
from signer_client.errors import ClientError

ROOT = Path(__file__).resolve().parent.parent


def _tuf(version: int, note: str = "") -> bytes:
    signed = {
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
        "targets": {},
    }
    if note:
        signed["custom"] = note
    return str(encode_canonical(signed)).encode()


def _tuf_root(version: int) -> bytes:
    """A root role's ``signed`` (no keys: the daemon checks the version and expiry)."""
    signed = {
        "_type": "root",
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
        "consistent_snapshot": True,
        "keys": {},
        "roles": {},
    }
    return str(encode_canonical(signed)).encode()


@contextlib.contextmanager
def serving(
    tmp_path: Path,
    pg_cluster: Any,
    names: Sequence[str] = ("a", "b"),
    policy: str | None = None,
    clients: Sequence[str] = ("admin", "alice"),
) -> Iterator[list[Daemon]]:
    """Replicas ``names``: one token, one PKI, one fresh database; stopped afterwards."""
    url = pg_cluster.fresh_database(f"replicas_{secrets.token_hex(6)}")
    password = tmp_path / "db-password"
    password.write_text(pg_cluster.password)
    password.chmod(0o600)
    env = create_token(tmp_path / "hsm")  # one token for all (a network HSM in production)
    daemons: list[Daemon] = []
    try:
        for name in names:
            root = tmp_path / name
            root.mkdir()
            if daemons:  # one PKI: a client's certificate works on every replica
                shutil.copytree(daemons[0].pki, root / "pki")
            daemon = Daemon(
                root=root,
                port=free_port(),
                env=env,
                clients=list(clients),
                policy=policy,
                state_options=f'url = "{url}"\npassword_file = "{password}"\nreplica = "{name}"',
            )
            daemon.start()
            daemons.append(daemon)
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster: Any) -> Iterator[tuple[Daemon, Daemon]]:
    with serving(tmp_path, pg_cluster) as (a, b):
        yield a, b


def signerd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``signerd ARGS --config`` the daemon's config (e.g. ``audit verify``)."""
    return subprocess.run(
        [sys.executable, "-m", "signer.cli", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        env=dict(daemon.env, PYTHONPATH=f"{ROOT}:{ROOT / 'clients'}"),
        timeout=60,
    )


def refused(call: Callable[[], object]) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def test_replicas_share_keys_versions_and_the_audit_chain(
    replicas: tuple[Daemon, Daemon],
) -> None:
    a, b = replicas
    with a.client("admin") as admin_a, b.client("admin") as admin_b:
        key = admin_a.create_key("repo", "ecdsa-sha2-nistp256", role="targets")
        # A key created through A signs at once through B.
        assert admin_b.sign(key.key_id, _tuf(1)).signature
        # A version signed through A can be neither rolled back nor forked through B.
        admin_a.sign(key.key_id, _tuf(5))
        for payload in (_tuf(4), _tuf(5, "fork")):
            with pytest.raises(ClientError) as refused:
                admin_b.sign(key.key_id, payload)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert admin_b.sign(key.key_id, _tuf(5)).signature  # the same bytes again: fine
        # A retirement on A is refused by B within one second.
        admin_b.sign(key.key_id, b"raw before")  # B has the key cached
        admin_a.retire_key(key.key_id)
        retired = time.monotonic()
        while True:
            try:
                admin_b.sign(key.key_id, b"raw after")
            except ClientError as exc:
                assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, exc
                break
            assert time.monotonic() - retired < 1.0, "B still signs with a key retired on A"
            time.sleep(0.02)
    # One audit chain for both, verifiable with `signerd audit verify`.
    for replica in (a, b):
        done = signerd(replica, "audit", "verify")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK:" in done.stdout, done.stdout
    # Each entry names the replica that wrote it.
    done = signerd(b, "audit", "export")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["replica"] for r in rows} == {"a", "b"}, rows
    mine = [(r["operation"], r["outcome"], r["replica"]) for r in rows if r["key_id"] == key.key_id]
    assert mine[0] == ("create", "allowed", "a"), mine
    assert ("retire", "allowed", "a") in mine
    assert mine.count(("sign", "denied", "b")) == 2  # the rollback and the fork
    assert ("sign-raw", "allowed", "b") in mine and mine[-1] == ("sign-raw", "failed", "b")


def test_a_batch_of_version_claims_is_judged_item_by_item_across_replicas(
    replicas: tuple[Daemon, Daemon],
) -> None:
    """One SignBatch through B with TUF payloads for several keys: on PostgreSQL the
    group's claims are one multi-row upsert; each item is still judged as alone (forward,
    re-sign, rollback, fork, first version) against versions signed through A."""
    from authz_helpers import verify

    from signer_api.v1 import signer_pb2_grpc as pb_grpc

    a, b = replicas
    with a.client("admin") as admin_a:
        keys = [
            admin_a.create_key(f"batch-{n}", "ecdsa-sha2-nistp256", role="targets")
            for n in range(5)
        ]
        for key in keys[:4]:
            admin_a.sign(key.key_id, _tuf(5))
    plan = [
        (keys[0], _tuf(6), grpc.StatusCode.OK),  # forward
        (keys[1], _tuf(5), grpc.StatusCode.OK),  # the same bytes again
        (keys[2], _tuf(4), grpc.StatusCode.PERMISSION_DENIED),  # rollback
        (keys[3], _tuf(5, "fork"), grpc.StatusCode.PERMISSION_DENIED),  # fork
        (keys[4], _tuf(1), grpc.StatusCode.OK),  # a key's first version
    ]
    request = pb.SignBatchRequest(
        items=[pb.SignBatchItem(key_id=k.key_id, payload=payload) for k, payload, _ in plan]
    )
    with b.channel("admin") as channel:
        response = pb_grpc.SigningServiceStub(channel).SignBatch(request, timeout=10)
    codes = [r.status.code for r in response.results]
    assert codes == [want.value[0] for _, _, want in plan], response
    for (key, payload, want), result in zip(plan, response.results, strict=True):
        if want == grpc.StatusCode.OK:
            verify(key, payload, result.signature)
    assert "lower than version 5" in response.results[2].status.message
    assert "different content" in response.results[3].status.message
    # The refusals wrote nothing: the versions stand as the plan left them, seen from A.
    with a.client("admin") as admin_a:
        assert admin_a.sign(keys[0].key_id, _tuf(6)).signature  # re-sign of the new 6
        assert refused(lambda: admin_a.sign(keys[2].key_id, _tuf(4))).code == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert admin_a.sign(keys[2].key_id, _tuf(5)).signature
    for replica in (a, b):
        assert replica.health() == health_pb2.HealthCheckResponse.SERVING


QUORUM_POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read"]

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
"""


def test_quorum_request_on_a_approved_through_b_and_c_signs_once(
    tmp_path: Path, pg_cluster: Any
) -> None:
    with serving(
        tmp_path, pg_cluster, ("a", "b", "c"), QUORUM_POLICY, ("admin", "alice", "carol", "dave")
    ) as (a, b, c):
        with a.client("admin") as admin:
            key = admin.create_key("root-1", "ecdsa-sha2-nistp256", role="root", quorum=True)
        payload = _tuf_root(1)
        digest = hashlib.sha256(payload).hexdigest()
        with (
            a.client("alice") as alice_a,
            b.client("alice") as alice_b,
            b.client("carol") as carol_b,
            c.client("dave") as dave_c,
        ):
            rid = alice_a.request_signature(key.key_id, payload, "root rotation").request_id
            assert list(carol_b.approve(rid, digest).approvers) == ["carol"]
            # One approval (made on B) is not enough, on A or on B.
            for alice in (alice_a, alice_b):
                error = refused(functools.partial(alice.sign, key.key_id, payload, request_id=rid))
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION
                assert error.message == f"signature request {rid} has 1 of 2 approvals"
            assert refused(lambda: dave_c.approve(rid, "0" * 64)).code == (
                grpc.StatusCode.FAILED_PRECONDITION
            )
            approved = dave_c.approve(rid, digest)
            assert approved.state == pb.SIGNATURE_REQUEST_STATE_APPROVED
            assert sorted(approved.approvers) == ["carol", "dave"]
            assert alice_b.get_signature_request(rid).state == pb.SIGNATURE_REQUEST_STATE_APPROVED

            # Sign through A and B at the same instant: exactly one signature.
            start = threading.Barrier(2)
            results: dict[str, object] = {}

            def sign(name: str, client: Any) -> None:
                start.wait()
                try:
                    results[name] = client.sign(key.key_id, payload, request_id=rid)
                except ClientError as exc:
                    results[name] = exc

            threads = [
                threading.Thread(target=sign, args=(n, cl))
                for n, cl in (("a", alice_a), ("b", alice_b))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            signed = {n: r for n, r in results.items() if isinstance(r, pb.SignResponse)}
            errors = [r for r in results.values() if isinstance(r, ClientError)]
            assert len(signed) == 1 and len(errors) == 1, results
            assert errors[0].code == grpc.StatusCode.FAILED_PRECONDITION, errors[0]
            assert "already signed" in errors[0].message, errors[0].message
            # And once fulfilled, no replica signs it again.
            for alice in (alice_a, alice_b):
                error = refused(functools.partial(alice.sign, key.key_id, payload, request_id=rid))
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION
                assert "already signed" in error.message
            assert alice_a.get_signature_request(rid).state == pb.SIGNATURE_REQUEST_STATE_FULFILLED
        done = signerd(a, "audit", "export")
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        signs = [r for r in rows if r["request_id"] == rid and r["operation"] == "sign"]
        assert [r["outcome"] for r in signs].count("allowed") == 1, signs


RATE, BURST = 10.0, 10
RATE_POLICY = f"""
[[rules]]
principals = ["admin"]
operations = ["create", "read"]

[[rules]]
principals = ["ci"]
operations = ["sign-raw", "read"]

[rate_limits]
ci = {{ rate = {RATE}, burst = {BURST} }}
"""


def test_a_rate_limit_holds_across_replicas(tmp_path: Path, pg_cluster: Any) -> None:
    with serving(tmp_path, pg_cluster, ("a", "b"), RATE_POLICY, ("admin", "ci")) as (a, b):
        with a.client("admin") as admin:
            key = admin.create_key("raw", "ecdsa-sha2-nistp256", role="targets")
        counts = {"a": 0, "b": 0}
        refusals = 0
        other: list[BaseException] = []
        lock = threading.Lock()
        clients = {
            (name, i): daemon.client("ci")
            for name, daemon in (("a", a), ("b", b))
            for i in range(3)
        }
        start = threading.Barrier(len(clients) + 1)
        seconds = 3.0

        def hammer(name: str, client: Any) -> None:
            nonlocal refusals
            start.wait()
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline:
                i += 1
                try:
                    client.sign(key.key_id, f"{name} {threading.get_ident()} {i}".encode())
                    with lock:
                        counts[name] += 1
                except ClientError as exc:
                    if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        with lock:
                            other.append(exc)
                        return
                    with lock:
                        refusals += 1
                    time.sleep(0.002)

        threads = [
            threading.Thread(target=hammer, args=(name, client))
            for (name, _), client in clients.items()
        ]
        try:
            for t in threads:
                t.start()
            start.wait()
            began = time.monotonic()
            for t in threads:
                t.join(timeout=30)
            elapsed = time.monotonic() - began
        finally:
            for client in clients.values():
                client.close()
        assert not other, other
        signed = counts["a"] + counts["b"]
        limit = BURST + RATE * elapsed  # what one signer allows the principal meanwhile
        assert counts["a"] > 0 and counts["b"] > 0 and refusals > 0, (counts, refusals)
        assert abs(signed - limit) <= 0.1 * limit, (
            f"{counts} signatures in {elapsed:.2f}s through two replicas; one limit allows "
            f"{limit:.0f}"
        )


# -- faults ----------------------------------------------------------------------------------


def _allowed_signatures(daemon: Daemon) -> set[tuple[str, str]]:
    """(key_id, payload_sha256) of every allowed sign/sign-raw entry of the shared chain."""
    done = signerd(daemon, "audit", "export")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return {
        (r["key_id"], r["payload_sha256"])
        for r in rows
        if r["outcome"] == "allowed" and r["operation"] in ("sign", "sign-raw")
    }


def _verified(daemon: Daemon) -> str:
    done = signerd(daemon, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("OK:"), done.stdout
    return done.stdout


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def test_postgresql_stopped_and_restarted_while_two_replicas_serve(
    tmp_path: Path, pg_cluster: Any
) -> None:
    with serving(tmp_path, pg_cluster) as (a, b):
        received: list[tuple[str, str]] = []
        with a.client("admin") as admin_a, b.client("admin") as admin_b:
            key = admin_a.create_key("repo", "ecdsa-sha2-nistp256", role="targets")
            for n, client in enumerate((admin_a, admin_b, admin_a, admin_b), start=1):
                assert client.sign(key.key_id, _tuf(n)).signature  # both cached, both warm
                received.append((key.key_id, _digest(_tuf(n))))
            pg_cluster.stop()
            try:
                stopped = time.monotonic()
                for daemon in (a, b):
                    daemon.wait_serving(timeout=10, want=health_pb2.HealthCheckResponse.NOT_SERVING)
                noticed = time.monotonic() - stopped
                # Fail closed: no signature while the audit chain cannot be written.
                for n, client in enumerate((admin_a, admin_b), start=100):
                    for payload in (_tuf(n), f"raw {n}".encode()):
                        error = refused(functools.partial(client.sign, key.key_id, payload))
                        assert error.code == grpc.StatusCode.UNAVAILABLE, error
                        assert "unavailable" in error.message, error.message
            finally:
                pg_cluster.start()
            # Both recover without a restart, and sign again (the same processes).
            pids = [a.proc.pid, b.proc.pid]  # type: ignore[union-attr]
            for daemon in (a, b):
                daemon.wait_serving(timeout=20)
            assert [a.proc.pid, b.proc.pid] == pids  # type: ignore[union-attr]
            for n, client in enumerate((admin_a, admin_b, admin_b, admin_a), start=200):
                payload = _tuf(n) if n % 2 else f"raw after {n}".encode()
                assert client.sign(key.key_id, payload).signature
                received.append((key.key_id, _digest(payload)))
            # The anti-rollback claims survived the outage: still refused through either.
            for client in (admin_a, admin_b):
                assert refused(functools.partial(client.sign, key.key_id, _tuf(150))).code == (
                    grpc.StatusCode.PERMISSION_DENIED
                )
        assert noticed < 5.0, f"health said NOT_SERVING {noticed:.1f}s after the outage"
        assert set(received) <= _allowed_signatures(b)
        _verified(a)


def test_a_replica_killed_under_signing_load(tmp_path: Path, pg_cluster: Any) -> None:
    with serving(tmp_path, pg_cluster) as (a, b):
        with a.client("admin") as admin:
            key = admin.create_key("repo", "ecdsa-sha2-nistp256", role="targets")
        received: dict[str, list[str]] = {"a": [], "b": []}  # payload sha256 of each signature
        failures: dict[str, list[ClientError]] = {"a": [], "b": []}
        lock = threading.Lock()
        stop = threading.Event()
        killed = threading.Event()
        after_kill = {"b": 0}

        def load(name: str, daemon: Daemon, worker: int) -> None:
            with daemon.client("alice", timeout=5.0) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    payload = f"{name} {worker} {n}".encode()
                    try:
                        client.sign(key.key_id, payload)
                    except ClientError as exc:
                        with lock:
                            failures[name].append(exc)
                        if name == "a" and killed.is_set():
                            return  # A is gone: its clients give up
                        continue
                    with lock:
                        received[name].append(_digest(payload))
                        if name == "b" and killed.is_set():
                            after_kill["b"] += 1

        threads = [
            threading.Thread(target=load, args=(name, daemon, worker))
            for name, daemon in (("a", a), ("b", b))
            for worker in range(4)
        ]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 10
            while len(received["a"]) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            a.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            killed.set()
            a.proc.wait(timeout=10)  # type: ignore[union-attr]
            time.sleep(1.5)  # B keeps signing meanwhile
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert len(received["a"]) >= 50, received["a"]
        assert not failures["b"], failures["b"][:3]
        assert after_kill["b"] > 10, after_kill
        # A's clients saw A go away, nothing else.
        assert {e.code for e in failures["a"]} <= {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        }, failures["a"][:3]
        # Every signature a client received has its entry in the shared chain.
        logged = {digest for key_id, digest in _allowed_signatures(b) if key_id == key.key_id}
        for name in ("a", "b"):
            missing = set(received[name]) - logged
            assert not missing, f"{len(missing)} signatures from {name} without an audit entry"
        b.wait_serving(timeout=5)
        with b.client("alice") as client:
            assert client.sign(key.key_id, b"after the kill").signature
        _verified(b)
