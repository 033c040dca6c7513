"""The one request pipeline: every API request leaves its audit entry, and the event
loop never waits on a lock.

Real token, real daemon, real mTLS; the audit rows are read from the daemon's database.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from securesystemslib.signer import Signature

from harness import HOLD_LOCK, Daemon, audit_rows, pull_token, reinsert_token, running_daemon
from signer.notary import signer_pb2 as notary_pb
from signer.notary import signer_pb2_grpc as notary_grpc
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc
from signer_client import NotFoundError, UnavailableError
from signer_client.client import tuf_key

SERVING = health_pb2.HealthCheckResponse.SERVING


def tuf(role: str, version: int) -> bytes:
    body = {"_type": role, "expires": "2030-01-01T00:00:00Z", "meta": {}, "version": version}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def last_seq(daemon: Daemon) -> int:
    with sqlite3.connect(daemon.state / "audit.db") as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0])


def rows_after(daemon: Daemon, seq: int) -> list[dict[str, Any]]:
    return audit_rows(daemon, "seq > ?", (seq,))


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stubs(daemon: Daemon) -> Iterator[tuple[Any, Any, grpc.Channel]]:
    with daemon.channel("admin") as channel:
        yield pb_grpc.KeyServiceStub(channel), pb_grpc.SigningServiceStub(channel), channel


def test_every_request_leaves_exactly_one_entry(
    daemon: Daemon, stubs: tuple[Any, Any, grpc.Channel]
) -> None:
    keys, signing, channel = stubs
    key = keys.CreateKey(
        pb.CreateKeyRequest(
            label="one-entry", algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256, role="timestamp"
        )
    ).key
    quorum = keys.CreateKey(
        pb.CreateKeyRequest(
            label="one-entry-q",
            algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256,
            role="root",
            quorum=True,
        )
    ).key
    malformed = channel.unary_unary(
        "/signer_api.v1.SigningService/Sign",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    cases: list[tuple[str, Callable[[], Any], grpc.StatusCode]] = [
        ("sign", lambda: signing.Sign(pb.SignRequest(key_id="0" * 64, payload=b"x")), "NOT_FOUND"),
        ("sign", lambda: signing.Sign(pb.SignRequest(payload=b"x")), "INVALID_ARGUMENT"),
        ("sign", lambda: signing.Sign(pb.SignRequest(key_id=key.key_id)), "INVALID_ARGUMENT"),
        ("sign", lambda: signing.SignBatch(pb.SignBatchRequest()), "INVALID_ARGUMENT"),
        ("sign", lambda: malformed(b"\xff\xff\xff\xff"), "INVALID_ARGUMENT"),
        (
            "sign",
            lambda: signing.Sign(pb.SignRequest(key_id=key.key_id, payload=b'{"_type":"\\ud800"}')),
            "INVALID_ARGUMENT",
        ),
        (
            "request-signature",
            lambda: signing.RequestSignature(
                pb.RequestSignatureRequest(key_id=quorum.key_id, payload=b'{"a":"\\ud800"}')
            ),
            "INVALID_ARGUMENT",
        ),
        (
            "request-signature",
            lambda: signing.RequestSignature(pb.RequestSignatureRequest(key_id=quorum.key_id)),
            "INVALID_ARGUMENT",
        ),
        (
            "approve",
            lambda: signing.Approve(pb.ApproveRequest(request_id="nope", payload_sha256="00")),
            "NOT_FOUND",
        ),
        ("read", lambda: keys.GetKey(pb.GetKeyRequest(key_id="k" * 1_000_000)), "NOT_FOUND"),
        (
            "create",
            lambda: keys.CreateKey(pb.CreateKeyRequest(label="bad\n", role="targets")),
            "INVALID_ARGUMENT",
        ),
    ]
    for operation, call, code in cases:
        before = last_seq(daemon)
        assert code_of(call).name == code, (operation, code)
        rows = rows_after(daemon, before)
        assert len(rows) == 1, (operation, code, rows)
        assert (rows[0]["operation"], rows[0]["code"]) == (operation, code), rows[0]
        assert rows[0]["outcome"] in ("failed", "denied")
        assert rows[0]["principal"] == "admin"
    # A success is one entry too, and a batch one per item (signed or refused).
    before = last_seq(daemon)
    signing.Sign(pb.SignRequest(key_id=key.key_id, payload=tuf("timestamp", 1)))
    batch = signing.SignBatch(
        pb.SignBatchRequest(
            key_id=key.key_id,
            items=[pb.SignBatchItem(payload=tuf("timestamp", 1)), pb.SignBatchItem(payload=b"")],
        )
    )
    assert [r.status.code for r in batch.results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    rows = rows_after(daemon, before)
    assert [(r["operation"], r["outcome"]) for r in rows] == [
        ("sign", "allowed"),
        ("sign", "allowed"),
        ("sign", "failed"),
    ]
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_token_outage_under_load_audits_every_refusal(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as daemon:
        client = daemon.client()
        key = client.create_key("outage", "ecdsa-sha2-nistp256", "timestamp")
        client.sign(key.key_id, b"before")
        before = last_seq(daemon)
        away = pull_token(daemon)
        answers: list[str] = []
        missing: list[str] = []  # requests for a key that does not exist, in the same groups
        lock = threading.Lock()
        deadline = time.monotonic() + 2.0

        def load() -> None:
            with daemon.client() as mine:
                while time.monotonic() < deadline:
                    try:
                        mine.sign(key.key_id, b"while pulled")
                        outcome = "OK"
                    except UnavailableError:
                        outcome = "UNAVAILABLE"
                    with lock:
                        answers.append(outcome)

        def unknown_key() -> None:
            with daemon.client() as mine:
                while time.monotonic() < deadline:
                    try:
                        mine.sign("no-such-key", b"while pulled")
                        outcome = "OK"
                    except NotFoundError:
                        outcome = "NOT_FOUND"
                    except UnavailableError:
                        outcome = "UNAVAILABLE"
                    with lock:
                        missing.append(outcome)

        threads = [threading.Thread(target=load) for _ in range(4)]
        threads += [threading.Thread(target=unknown_key) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        reinsert_token(away)
        daemon.wait_serving(timeout=20)
        refused = answers.count("UNAVAILABLE")
        assert refused > 20, answers[:5]
        rows = [r for r in rows_after(daemon, before) if r["operation"] in ("sign", "sign-raw")]
        unavailable = [r for r in rows if r["code"] == "UNAVAILABLE"]
        assert len(unavailable) == refused, (len(unavailable), refused)
        assert all(r["outcome"] == "failed" and r["key_id"] == key.key_id for r in unavailable)
        assert len([r for r in rows if r["outcome"] == "allowed"]) == answers.count("OK")
        # A request refused before the token keeps its own answer, as its entry says,
        # even when the token fails the group it was signed with.
        assert len(missing) > 20 and set(missing) == {"NOT_FOUND"}, collections.Counter(missing)
        not_found = [r for r in rows if r["key_id"] == "no-such-key"]
        assert len(not_found) == len(missing)
        assert {r["code"] for r in not_found} == {"NOT_FOUND"}
        response = client.sign(key.key_id, b"after")  # healed, alive
        tuf_key(key).verify_signature(Signature(key.key_id, response.signature.hex()), b"after")


LOCKED_POLICY = """
[groups]
admins = ["admin"]

[[rules]]
principals = ["group:admins"]
operations = ["create", "read", "sign", "sign-raw"]

[[rules]]
principals = ["carol"]
operations = ["approve"]

[[rules]]
principals = ["notary-server"]
operations = ["create", "sign", "read"]
keys = { roles = ["timestamp"], repositories = ["*"] }

[quorum]
approvals = 1

[rate_limits]
"*" = { rate = 1000.0, burst = 1000 }
"""

# What is asked while each database is locked: the requests that must write to it.
LOCKED_WORK = {
    "tuf.db": "sign",  # a new TUF version: the version claim
    "audit.db": "sign",  # every entry
    "ratelimit.db": "sign",  # the bucket
    "quorum.db": "quorum",  # Sign by request id: the request's claim
    "keys.db": "create",  # CreateKey: the registry row
    "notary.db": "notary",  # notary CreateKey: the notary key map
}


def _locked_workload(daemon: Daemon, work: str) -> list[Callable[[], Any]]:
    """Four requests of kind ``work``, set up (keys, approved requests) before the lock."""
    client = daemon.client()
    if work == "sign":
        keys = [client.create_key(f"lk-{i}", "ecdsa-sha2-nistp256", "timestamp") for i in range(4)]
        client.sign(keys[0].key_id, tuf("timestamp", 1))

        def signer(key_id: str) -> Callable[[], Any]:
            return lambda: daemon.client(timeout=30).sign(key_id, tuf("timestamp", 2))

        return [signer(k.key_id) for k in keys]
    if work == "quorum":
        carol = daemon.client("carol")
        calls = []
        for i in range(4):
            key = client.create_key(f"lq-{i}", "ecdsa-sha2-nistp256", "targets", quorum=True)
            rid = client.request_signature(key.key_id, b"release %d" % i).request_id
            carol.approve(rid, hashlib.sha256(b"release %d" % i).hexdigest())
            calls.append(
                lambda k=key.key_id, r=rid, i=i: daemon.client(timeout=30).sign(
                    k, b"release %d" % i, request_id=r
                )
            )
        return calls
    if work == "create":
        return [
            lambda i=i: daemon.client(timeout=30).create_key(
                f"lc-{i}", "ecdsa-sha2-nistp256", "timestamp"
            )
            for i in range(4)
        ]

    def notary_create() -> Any:
        with daemon.channel("notary-server") as channel:
            return notary_grpc.KeyManagementStub(channel).CreateKey(
                notary_pb.CreateKeyRequest(
                    algorithm="ecdsa", gun="example.com/app", role="timestamp"
                ),
                timeout=30,
            )

    return [notary_create for _ in range(4)]


@pytest.mark.parametrize("database", sorted(LOCKED_WORK))
def test_health_answers_while_a_state_database_is_locked(tmp_path: Path, database: str) -> None:
    clients = ["admin", "carol", "notary-server"]
    with running_daemon(tmp_path / "d", policy=LOCKED_POLICY, clients=clients) as daemon:
        calls = _locked_workload(daemon, LOCKED_WORK[database])
        before = last_seq(daemon)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(daemon.state / database), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        results: list[Any] = []
        waited: list[float] = []

        def run(call: Callable[[], Any]) -> None:
            try:
                results.append(call())
            except Exception as exc:
                results.append(exc)
            waited.append(time.monotonic() - locked_at)

        workers = [threading.Thread(target=run, args=(call,)) for call in calls]
        for t in workers:
            t.start()
        time.sleep(0.3)  # the requests are now waiting on the lock
        latencies = []
        with daemon.channel("admin") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected
            while time.monotonic() - locked_at < 2.5:
                start = time.monotonic()
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                latencies.append(time.monotonic() - start)
                assert status == SERVING
                time.sleep(0.05)
            assert holder.poll() is None  # the lock was held all along
        holder.wait(timeout=10)
        for t in workers:
            t.join(timeout=40)
        assert len(latencies) > 10
        assert max(latencies) < 0.1, f"health took {max(latencies) * 1000:.0f} ms"
        # Each request waited for the lock, then went through (none lost, none INTERNAL).
        assert len(results) == 4
        for result in results:
            assert not isinstance(result, Exception), result
        # ... and each needed the locked database (the workload is not beside the point).
        assert min(waited) > 2.9, waited
        assert daemon.proc is not None and daemon.proc.poll() is None
        rows = rows_after(daemon, before)
        assert len([r for r in rows if r["outcome"] == "allowed"]) == 4, rows
        assert all(r["outcome"] == "allowed" for r in rows), rows


READER_POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "sign", "sign-raw", "retire", "destroy"]

[[rules]]
principals = ["alice"]
operations = ["read"]
"""


def test_denied_and_lifecycle_requests_leave_exactly_one_entry(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", policy=READER_POLICY, clients=["admin", "alice"]) as d:
        with d.channel("admin") as admin_channel, d.channel("alice") as alice_channel:
            keys = pb_grpc.KeyServiceStub(admin_channel)
            signing = pb_grpc.SigningServiceStub(admin_channel)
            alice_keys = pb_grpc.KeyServiceStub(alice_channel)
            alice_signing = pb_grpc.SigningServiceStub(alice_channel)
            key = keys.CreateKey(
                pb.CreateKeyRequest(
                    label="lifecycle", algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256, role="timestamp"
                )
            ).key
            new_key = pb.CreateKeyRequest(
                label="nope", algorithm=pb.ALGORITHM_ECDSA_SHA2_NISTP256, role="timestamp"
            )
            cases: list[tuple[str, str, Callable[[], Any], str]] = [
                (
                    "alice",
                    "sign-raw",
                    lambda: alice_signing.Sign(pb.SignRequest(key_id=key.key_id, payload=b"x")),
                    "PERMISSION_DENIED",
                ),
                (
                    "alice",
                    "sign-raw",
                    lambda: alice_signing.SignBatch(
                        pb.SignBatchRequest(
                            key_id=key.key_id, items=[pb.SignBatchItem(payload=b"x")]
                        )
                    ),
                    "OK",
                ),
                ("alice", "create", lambda: alice_keys.CreateKey(new_key), "PERMISSION_DENIED"),
                (
                    "alice",
                    "retire",
                    lambda: alice_keys.RetireKey(pb.RetireKeyRequest(key_id=key.key_id)),
                    "PERMISSION_DENIED",
                ),
                (
                    "alice",
                    "destroy",
                    lambda: alice_keys.DestroyKey(
                        pb.DestroyKeyRequest(key_id=key.key_id, confirm=key.key_id)
                    ),
                    "PERMISSION_DENIED",
                ),
                (
                    "admin",
                    "retire",
                    lambda: keys.RetireKey(pb.RetireKeyRequest(key_id="0" * 64)),
                    "NOT_FOUND",
                ),
                (
                    "admin",
                    "destroy",
                    lambda: keys.DestroyKey(
                        pb.DestroyKeyRequest(key_id=key.key_id, confirm="not it")
                    ),
                    "INVALID_ARGUMENT",
                ),
            ]
            for principal, operation, call, code in cases:
                before = last_seq(d)
                if code == "OK":  # a batch answers per item
                    results = call().results
                    assert [r.status.code for r in results] == [
                        grpc.StatusCode.PERMISSION_DENIED.value[0]
                    ]
                    code = "PERMISSION_DENIED"
                else:
                    assert code_of(call).name == code, (principal, operation, code)
                rows = rows_after(d, before)
                assert len(rows) == 1, (principal, operation, code, rows)
                assert (rows[0]["principal"], rows[0]["operation"], rows[0]["code"]) == (
                    principal,
                    operation,
                    code,
                ), rows[0]
            # A batch item the JSON parser refuses (a lone surrogate) has its own entry,
            # beside the signed item's.
            before = last_seq(d)
            batch = signing.SignBatch(
                pb.SignBatchRequest(
                    key_id=key.key_id,
                    items=[
                        pb.SignBatchItem(payload=b'{"_type":"\\ud800"}'),
                        pb.SignBatchItem(payload=tuf("timestamp", 1)),
                    ],
                )
            )
            assert [r.status.code for r in batch.results] == [
                grpc.StatusCode.INVALID_ARGUMENT.value[0],
                0,
            ]
            rows = rows_after(d, before)
            assert [(r["outcome"], r["code"]) for r in rows] == [
                ("failed", "INVALID_ARGUMENT"),
                ("allowed", "OK"),
            ], rows
            assert rows[0]["payload_sha256"] == hashlib.sha256(b'{"_type":"\\ud800"}').hexdigest()

            # A destroy the token fails after its allowed entry was committed: a second
            # entry says that change failed, naming the first; the key is still there.
            away = pull_token(d)
            before = last_seq(d)
            try:
                assert (
                    code_of(
                        lambda: keys.DestroyKey(
                            pb.DestroyKeyRequest(key_id=key.key_id, confirm=key.key_id)
                        )
                    ).name
                    == "UNAVAILABLE"
                )
            finally:
                reinsert_token(away)
            rows = rows_after(d, before)
            assert [(r["operation"], r["outcome"]) for r in rows] == [
                ("destroy", "allowed"),
                ("destroy", "failed"),
            ], rows
            assert f"the change allowed in audit entry {rows[0]['seq']} failed" in rows[1]["detail"]
            d.wait_serving(timeout=20)
            signed = signing.Sign(pb.SignRequest(key_id=key.key_id, payload=b"still here"))
            tuf_key(keys.GetKey(pb.GetKeyRequest(key_id=key.key_id)).key).verify_signature(
                Signature(key.key_id, signed.signature.hex()), b"still here"
            )
        assert d.proc is not None and d.proc.poll() is None
