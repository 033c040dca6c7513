"""Quorum keys: RequestSignature -> M distinct approvals (never the requester) -> Sign."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows, sha256, tuf_payload, verify, wait_for

from harness import Daemon, running_daemon
from signer.cli import main as signerd
from signer_api.v1 import signer_pb2 as pb
from signer_client import ClientError

POLICY = """
[groups]
root-holders = ["carol", "dave", "erin"]

[[rules]]
principals = ["admin"]
operations = ["create", "read"]

[[rules]]
principals = ["alice"]
operations = ["sign", "read"]
keys = { roles = ["root", "targets"] }

[[rules]]
principals = ["group:root-holders"]
operations = ["approve"]
keys = { roles = ["root"] }

[tuf]
max_expiry_days = { root = 365 }

[quorum]
approvals = 2
window_seconds = 3600
"""

CLIENTS = ["admin", "alice", "carol", "dave", "erin", "bob"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("quorum"), policy=POLICY, clients=CLIENTS) as d:
        yield d


@pytest.fixture(scope="module")
def clients(served: Daemon) -> Iterator[dict[str, Any]]:
    made = {name: served.client(name) for name in CLIENTS}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def root_key(clients: dict[str, Any]) -> Any:
    return clients["admin"].create_key("root-1", role="root", quorum=True)


def _refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


def test_quorum_key_refuses_a_plain_sign(clients: dict[str, Any], root_key: Any) -> None:
    message = _refused(
        lambda: clients["alice"].sign(root_key.key_id, tuf_payload("root", 1)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert message == (
        f"key {root_key.key_id} is a quorum key: request a signature (RequestSignature), "
        "collect the approvals, then Sign with its request_id"
    )


def test_full_ceremony(served: Daemon, clients: dict[str, Any], root_key: Any) -> None:
    alice, carol, dave = clients["alice"], clients["carol"], clients["dave"]
    payload = tuf_payload("root", 1, days=300)
    digest = sha256(payload)
    request = alice.request_signature(root_key.key_id, payload, "yearly root rotation")
    rid = request.request_id
    assert (request.state, request.approvals_required, request.requester) == (
        pb.SIGNATURE_REQUEST_STATE_PENDING, 2, "alice",
    )  # fmt: skip
    assert request.payload == payload and request.payload_sha256 == digest

    # The requester may not approve their own request.
    message = _refused(lambda: alice.approve(rid, digest), grpc.StatusCode.PERMISSION_DENIED)
    assert message.startswith("alice may not approve")  # alice has no approve grant at all
    # An approver must name the payload they saw.
    message = _refused(
        lambda: carol.approve(rid, sha256(b"other")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "does not match the payload" in message
    # Someone without the approve grant.
    _refused(lambda: clients["bob"].approve(rid, digest), grpc.StatusCode.PERMISSION_DENIED)

    assert list(carol.approve(rid, digest).approvers) == ["carol"]
    message = _refused(
        lambda: alice.sign(root_key.key_id, payload, request_id=rid),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert message == f"signature request {rid} has 1 of 2 approvals"
    _refused(lambda: carol.approve(rid, digest), grpc.StatusCode.ALREADY_EXISTS)  # distinct

    approved = dave.approve(rid, digest.upper())
    assert approved.state == pb.SIGNATURE_REQUEST_STATE_APPROVED and sorted(approved.approvers) == [
        "carol",
        "dave",
    ]

    # Only the approved bytes, only by the requester.
    other = tuf_payload("root", 1, days=200)
    message = _refused(
        lambda: alice.sign(root_key.key_id, other, request_id=rid),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "differs from the one approved" in message
    signed = alice.sign(root_key.key_id, payload, request_id=rid)
    verify(root_key, payload, signed.signature)
    assert alice.get_signature_request(rid).state == pb.SIGNATURE_REQUEST_STATE_FULFILLED
    assert "already signed" in _refused(
        lambda: alice.sign(root_key.key_id, payload, request_id=rid),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    ops = [
        (r["principal"], r["operation"], r["outcome"])
        for r in audit_rows(served.state, "request_id = ?", (rid,))
    ]
    assert ("alice", "request-signature", "allowed") in ops
    assert ("alice", "approve", "denied") in ops
    assert ("carol", "approve", "failed") in ops  # wrong hash
    assert ("dave", "approve", "allowed") in ops
    assert ops.count(("alice", "sign", "allowed")) == 1


def test_requester_who_may_approve_still_cannot_approve_own(
    served: Daemon, clients: dict[str, Any], root_key: Any
) -> None:
    """erin holds the approve grant; give her sign too and she still cannot self-approve."""
    policy = POLICY.replace('principals = ["alice"]', 'principals = ["alice", "erin"]')
    (served.root / "policy.toml").write_text(policy)
    served.signal(signal.SIGHUP)
    erin = clients["erin"]
    payload = tuf_payload("root", 2, days=300)

    def erin_may_request() -> Any:
        try:
            return erin.request_signature(root_key.key_id, payload)
        except ClientError:
            return None

    request = wait_for(erin_may_request)
    message = _refused(
        lambda: erin.approve(request.request_id, sha256(payload)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert message == (
        f"erin requested signature request {request.request_id} and may not approve it: "
        "approvals must come from someone else"
    )
    # Approvers cannot sign it for her, either.
    clients["carol"].approve(request.request_id, sha256(payload))
    clients["dave"].approve(request.request_id, sha256(payload))
    _refused(
        lambda: alice_sign(clients, root_key, payload, request.request_id),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    verify(
        root_key,
        payload,
        erin.sign(root_key.key_id, payload, request_id=request.request_id).signature,
    )
    (served.root / "policy.toml").write_text(POLICY)
    served.signal(signal.SIGHUP)


def alice_sign(clients: dict[str, Any], key: Any, payload: bytes, rid: str) -> Any:
    return clients["alice"].sign(key.key_id, payload, request_id=rid)


def test_request_checks_tuf_rules_and_key(clients: dict[str, Any], root_key: Any) -> None:
    alice = clients["alice"]
    assert "at most 365 days" in _refused(
        lambda: alice.request_signature(root_key.key_id, tuf_payload("root", 9, days=400)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    plain = clients["admin"].create_key("targets-plain", role="targets")
    assert "not a quorum key" in _refused(
        lambda: alice.request_signature(plain.key_id, tuf_payload("targets", 1)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "not a quorum key" in _refused(
        lambda: alice.sign(plain.key_id, tuf_payload("targets", 1), request_id="abc"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _refused(lambda: clients["bob"].get_signature_request("nope"), grpc.StatusCode.NOT_FOUND)
    # Nothing approvers could review in vain: oversized, or a fork of a signed version.
    assert "the limit is" in _refused(
        lambda: alice.request_signature(root_key.key_id, b"{" + b" " * (16 * 1024 * 1024 + 1024)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_request_refuses_a_second_payload_at_a_signed_version(clients: dict[str, Any]) -> None:
    alice, carol, dave = clients["alice"], clients["carol"], clients["dave"]
    root_key = clients["admin"].create_key("root-fork", role="root", quorum=True)  # own history
    first = tuf_payload("root", 500, days=300)
    rid = alice.request_signature(root_key.key_id, first).request_id
    carol.approve(rid, sha256(first))
    dave.approve(rid, sha256(first))
    alice.sign(root_key.key_id, first, request_id=rid)
    fork = tuf_payload("root", 500, days=200)
    assert "bump the version" in _refused(
        lambda: alice.request_signature(root_key.key_id, fork), grpc.StatusCode.PERMISSION_DENIED
    )


def test_expired_request(served: Daemon, clients: dict[str, Any], root_key: Any) -> None:
    (served.root / "policy.toml").write_text(
        POLICY.replace("window_seconds = 3600", "window_seconds = 1")
    )
    served.signal(signal.SIGHUP)
    payload = tuf_payload("root", 3, days=300)

    def short_window() -> Any:
        request = clients["alice"].request_signature(root_key.key_id, payload)
        return request if request.expires_at.seconds - request.created_at.seconds <= 1 else None

    request = wait_for(short_window)
    wait_for(
        lambda: (
            clients["alice"].get_signature_request(request.request_id).state
            == pb.SIGNATURE_REQUEST_STATE_EXPIRED
        )
    )
    assert "has expired" in _refused(
        lambda: clients["carol"].approve(request.request_id, sha256(payload)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    (served.root / "policy.toml").write_text(POLICY)
    served.signal(signal.SIGHUP)


def test_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    """The window, to the boundary, on a real store with a clock the test moves."""
    from signer.errors import FailedPrecondition
    from signer.quorum import QuorumStore, RequestState, SignatureRequest, refuse_if_closed
    from signer.storage.sqlite.quorum import SqliteQuorum

    now = [1000.0]
    store = QuorumStore(SqliteQuorum(tmp_path / "quorum.db"), clock=lambda: now[0])

    def request(request_id: str, approvals: int) -> SignatureRequest:
        return store.add(
            SignatureRequest(
                request_id, "k" * 64, b"payload", sha256(b"payload"), "alice", "", approvals,
                RequestState.PENDING, created_at=now[0], expires_at=now[0] + 60,
            )
        )  # fmt: skip

    request("late", 1)
    request("on-time", 1)
    now[0] = 1060.0  # the last instant of the window: still open
    assert store.get("late").state is RequestState.PENDING
    assert store.approve("on-time", "carol", refuse_if_closed).state is RequestState.APPROVED
    assert store.open_counts() == {"pending": 1, "approved": 1}
    now[0] = 1060.001  # past it: expired, neither approvable nor claimable
    assert store.get("late").state is RequestState.EXPIRED
    with pytest.raises(FailedPrecondition, match="has expired"):
        store.approve("late", "carol", refuse_if_closed)
    assert store.claim("on-time") is False
    assert store.open_counts() == {"pending": 0, "approved": 0}
    now[0] = 1030.0  # a clock that steps back sees the approved request open again, once
    assert store.claim("on-time") is True
    assert store.claim("on-time") is False
    store.close()


def _client_config(served: Daemon, name: str, tmp_path: Path) -> str:
    config = served.client_config(name)
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'address = "{config.address}"\nca = "{config.ca}"\ncert = "{config.cert}"\n'
        f'key = "{config.key}"\nretries = 0\n'
    )
    return str(path)


def test_cli_ceremony(
    served: Daemon, root_key: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload_file = tmp_path / "root.json"
    payload = tuf_payload("root", 4, days=300)
    payload_file.write_bytes(payload)
    cfg = {name: _client_config(served, name, tmp_path) for name in ("alice", "carol", "dave")}

    def run(*argv: str) -> tuple[int, str]:
        code = signerd(list(argv))
        return code, capsys.readouterr().out

    def settled() -> Any:
        code, out = run("request", "create", "--client-config", cfg["alice"],
                        "--key-id", root_key.key_id, "--payload-file", str(payload_file),
                        "--reason", "ceremony")  # fmt: skip
        return out if code == 0 and json.loads(out)["approvals_required"] == 2 else None

    created = json.loads(wait_for(settled))  # the policy was just reloaded by other tests
    rid = created["request_id"]
    assert created["state"] == "pending"
    assert created["payload_summary"]["_type"] == "root"
    code, out = run("request", "show", rid, "--client-config", cfg["carol"],
                    "--payload-out", str(tmp_path / "seen.json"))  # fmt: skip
    assert code == 0 and (tmp_path / "seen.json").read_bytes() == payload
    code, _ = run("request", "approve", rid, "--client-config", cfg["carol"],
                  "--payload-file", str(tmp_path / "seen.json"))  # fmt: skip
    assert code == 0
    code, out = run("request", "approve", rid, "--client-config", cfg["dave"],
                    "--payload-sha256", sha256(payload))  # fmt: skip
    assert code == 0 and json.loads(out)["state"] == "approved"
    code, out = run("request", "sign", rid, "--client-config", cfg["alice"])
    assert code == 0
    signature = json.loads(out)
    assert signature["keyid"] == root_key.key_id
    verify(root_key, payload, bytes.fromhex(signature["sig"]))
    code, _ = run("request", "approve", rid, "--client-config", cfg["alice"],
                  "--payload-sha256", sha256(payload))  # fmt: skip
    assert code == 1


def test_one_approval_yields_one_signature_under_concurrency(
    served: Daemon, clients: dict[str, Any], root_key: Any
) -> None:
    """Eight simultaneous Sign calls on one approved request: exactly one signature."""
    from concurrent.futures import ThreadPoolExecutor

    payload = tuf_payload("root", 1000, days=300)  # above any version other tests signed
    digest = sha256(payload)
    rid = clients["alice"].request_signature(root_key.key_id, payload, "race").request_id
    clients["carol"].approve(rid, digest)
    clients["dave"].approve(rid, digest)
    import threading

    racers = [served.client("alice") for _ in range(8)]
    for client in racers:  # connect first, so the Sign calls arrive together
        client.get_signature_request(rid)
    start = threading.Barrier(len(racers))

    def sign(client: Any) -> str:
        start.wait()
        try:
            client.sign(root_key.key_id, payload, request_id=rid)
            return "ok"
        except ClientError as exc:
            return exc.code.name

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(sign, racers))
    assert outcomes.count("ok") == 1, outcomes
    assert outcomes.count("FAILED_PRECONDITION") == 7, outcomes
