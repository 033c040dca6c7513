"""signerd's notary-signer API (package ``proto``) against a real daemon and token.

Wire format (key IDs, public keys, signatures) as notary computes and checks them, the
health names notary-server polls, and the authorisation rules: notary-server's principal
may create, read and use timestamp and snapshot keys only; DeleteKey needs ``destroy``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from grpc_health.v1 import health_pb2

from harness import Daemon, running_daemon
from signer.errors import InvalidArgument
from signer.notary import keys as nkeys
from signer.notary import signer_pb2 as pb
from signer.notary import signer_pb2_grpc as pb_grpc
from signer.notary.rules import signing_operation
from signer.policy import Operation

ROOT = Path(__file__).resolve().parent.parent
GUN = "example.com/app"
NOTARY = "notary-server.example.org"
OPS = "ops"
POLICY = f"""
[[rules]]
principals = ["{NOTARY}"]
operations = ["create", "sign", "read"]
keys = {{ roles = ["timestamp", "snapshot"], repositories = ["*"] }}

[[rules]]
principals = ["{OPS}"]
operations = ["read", "retire", "destroy"]
keys = {{ roles = ["*"], repositories = ["*"] }}

[[rules]]
principals = ["admin"]
operations = ["read", "audit"]
keys = {{ roles = ["*"], repositories = ["*"] }}
"""


def timestamp_content(version: int = 1, kind: str = "Timestamp") -> bytes:
    signed = {"_type": kind, "expires": "2030-01-01T00:00:00Z", "meta": {}, "version": version}
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


# -- pure functions ------------------------------------------------------------------------


def test_key_id_matches_notary_fixture() -> None:
    """A key ID from notary's own fixtures (fixtures/compatibility/notary0.1 root.json)."""
    public = base64.b64decode(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwTj8+har32eLdvKi3X7P6njHqzXWTFtOBYEJdJEZ9aqwRbcplVzt"
        "UeJpdHPA6JoiHAgK9+hXRxVOmM49FAywsA=="
    )
    assert (
        nkeys.key_id("ecdsa", public)
        == "1192c9d6a8e45e4fa80fd3eb7fff45778ccad29c84f4ce7afcf45f62210a4955"
    )
    assert nkeys.canonical_key_json("ecdsa", public).startswith(
        b'{"keytype":"ecdsa","keyval":{"private":null,"public":"MFkw'
    )


def test_public_bytes_and_verify() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    der = nkeys.public_bytes(ec_key.public_key())
    assert serialization.load_der_public_key(der) == ec_key.public_key()
    ed_key = ed25519.Ed25519PrivateKey.generate()
    raw = nkeys.public_bytes(ed_key.public_key())
    assert len(raw) == 32
    assert nkeys.verify("ed25519", raw, ed_key.sign(b"x"), b"x")
    assert not nkeys.verify("ed25519", raw, ed_key.sign(b"x"), b"y")


def test_signing_operation() -> None:
    assert signing_operation(timestamp_content(), "timestamp") is Operation.SIGN
    assert signing_operation(timestamp_content(kind="Snapshot"), "snapshot") is Operation.SIGN
    # Metadata of another role, or anything that is not metadata, needs sign-raw.
    assert signing_operation(timestamp_content(kind="Targets"), "timestamp") is Operation.SIGN_RAW
    assert signing_operation(b"\x00" * 32, "timestamp") is Operation.SIGN_RAW
    assert signing_operation(b"{not json", "timestamp") is Operation.SIGN_RAW
    assert signing_operation(b"[1]", "timestamp") is Operation.SIGN_RAW
    # Standard TUF spelling is not notary's: it must not slip past the v1 TUF rules.
    assert signing_operation(timestamp_content(kind="timestamp"), "timestamp") is Operation.SIGN_RAW
    # JSON that readers disagree on is refused outright, not signed raw.
    deep = b'{"_type":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    duplicate = b'{"_type":"Timestamp","version":1,"version":2}'
    for refused in (deep, duplicate, b'{"_type":"Timestamp","x":"\\ud800"}'):
        with pytest.raises(InvalidArgument):
            signing_operation(refused, "timestamp")


# -- against a daemon ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def notary_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("notary-api"),
        clients=["admin", NOTARY, OPS, "alice"],
        policy=POLICY,
    ) as daemon:
        yield daemon


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.keys = pb_grpc.KeyManagementStub(channel)
        self.signer = pb_grpc.SignerStub(channel)


@pytest.fixture(scope="module")
def notary(notary_daemon: Daemon) -> Iterator[Stubs]:
    with notary_daemon.channel(NOTARY) as channel:
        yield Stubs(channel)


def create(stubs: Stubs, algorithm: str = "ecdsa", role: str = "timestamp") -> pb.PublicKey:
    return stubs.keys.CreateKey(
        pb.CreateKeyRequest(algorithm=algorithm, gun=GUN, role=role), timeout=10
    )


def sign(stubs: Stubs, key_id: str, content: bytes) -> pb.Signature:
    return stubs.signer.Sign(
        pb.SignatureRequest(keyID=pb.KeyID(ID=key_id), content=content), timeout=10
    )


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def audit_rows(daemon: Daemon) -> list[tuple[str, ...]]:
    with sqlite3.connect(daemon.state / "audit.db") as conn:
        return conn.execute(
            "SELECT principal, operation, outcome, key_id, role, repository, code, detail "
            "FROM audit ORDER BY seq"
        ).fetchall()


def registry_row(daemon: Daemon, key_id: str) -> tuple[str, ...]:
    with sqlite3.connect(daemon.state / "keys.db") as conn:
        row = conn.execute(
            "SELECT object_id, algorithm_name, role, repository, state, created_by FROM keys "
            "WHERE key_id = ?",
            [key_id],
        ).fetchone()
    assert row is not None
    return tuple(row)


def linked_key_id(daemon: Daemon, notary_id: str) -> str:
    with sqlite3.connect(daemon.state / "notary.db") as conn:
        row = conn.execute(
            "SELECT key_id FROM notary_keys WHERE notary_id = ?", [notary_id]
        ).fetchone()
    assert row is not None
    return str(row[0])


def token_attributes(daemon: Daemon, object_id: str) -> dict[str, bool] | None:
    """The private key's attributes as the token reports them; None if not on the token."""
    code = (
        "import json, os, sys\n"
        "from signer.token import Token, TokenSettings, KeyObjectMissing\n"
        "from signer.errors import TokenUnavailable\n"
        "t = Token(TokenSettings(module='/usr/lib/softhsm/libsofthsm2.so', label=sys.argv[1], "
        "pin=os.environ['SIGNER_PIN'], probe_interval=0))\n"
        "t.open()\n"
        "try:\n"
        "    print(json.dumps(t.security_attributes(sys.argv[2])))\n"
        "except (KeyObjectMissing, TokenUnavailable):\n"
        "    print('null')\n"
        "t.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, daemon.label, object_id],
        env=dict(os.environ, **daemon.env),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, bool] | None = json.loads(done.stdout)
    return result


def test_health_names_notary_server_polls(notary_daemon: Daemon) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in (
        "grpc.health.v1.Health.KeyManagement",
        "grpc.health.v1.Health.Signer",
        "grpc.health.v1.Health.Overall",
        "proto.KeyManagement",
        "proto.Signer",
    ):
        assert notary_daemon.health(name) == serving, name


def test_reflection_lists_notary_services(notary_daemon: Daemon) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with notary_daemon.channel("admin") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"proto.KeyManagement", "proto.Signer"} <= names


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_create_info_sign_as_notary_expects(
    notary_daemon: Daemon, notary: Stubs, algorithm: str
) -> None:
    created = create(notary, algorithm)
    notary_id = created.keyInfo.keyID.ID
    assert created.keyInfo.algorithm.algorithm == algorithm
    assert notary_id == nkeys.key_id(algorithm, created.publicKey)
    if algorithm == "ecdsa":
        public = serialization.load_der_public_key(created.publicKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
    else:
        assert len(created.publicKey) == 32

    info = notary.keys.GetKeyInfo(pb.KeyID(ID=notary_id), timeout=10)
    assert notary_id == info.keyInfo.keyID.ID
    assert info.keyInfo.algorithm.algorithm == algorithm
    assert info.publicKey == created.publicKey
    assert info.role == "timestamp"

    content = timestamp_content()
    signature = sign(notary, notary_id, content)
    assert notary_id == signature.keyInfo.keyID.ID
    assert signature.algorithm.algorithm == ("ecdsa" if algorithm == "ecdsa" else "eddsa")
    assert len(signature.content) == 64  # ECDSA: r||s, 32 bytes each; Ed25519: 64 bytes
    assert nkeys.verify(algorithm, created.publicKey, signature.content, content)
    assert not nkeys.verify(algorithm, created.publicKey, signature.content, content + b" ")

    # The key went through the daemon's own path: registered, in the token, audited.
    key_id = linked_key_id(notary_daemon, notary_id)
    object_id, alg_name, role, repository, state, created_by = registry_row(notary_daemon, key_id)
    assert (role, repository, state, created_by) == ("timestamp", GUN, "active", NOTARY)
    assert alg_name == ("ecdsa-sha2-nistp256" if algorithm == "ecdsa" else "ed25519")
    attrs = token_attributes(notary_daemon, object_id)
    assert attrs is not None
    assert attrs["sensitive"] and not attrs["extractable"] and attrs["never_extractable"]

    rows = [r for r in audit_rows(notary_daemon) if r[3] == key_id]
    ops = [(r[1], r[2]) for r in rows]
    assert ops == [("create", "allowed"), ("read", "allowed"), ("sign", "allowed")]
    sign_row = rows[-1]
    assert sign_row[0] == NOTARY and sign_row[4:6] == ("timestamp", GUN)
    assert notary_id in sign_row[7]


def test_snapshot_keys_and_many_signatures(notary: Stubs) -> None:
    created = create(notary, "ecdsa", "snapshot")
    notary_id = created.keyInfo.keyID.ID
    for version in range(1, 6):
        content = timestamp_content(version, kind="Snapshot")
        signature = sign(notary, notary_id, content)
        assert nkeys.verify("ecdsa", created.publicKey, signature.content, content)


def test_notary_server_may_not_create_other_roles(notary_daemon: Daemon, notary: Stubs) -> None:
    for role in ("targets", "root", "targets/releases"):
        assert code_of(lambda r=role: create(notary, "ecdsa", r)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    denied = [r for r in audit_rows(notary_daemon) if r[1] == "create" and r[2] == "denied"]
    assert {r[4] for r in denied} >= {"targets", "root", "targets/releases"}


def test_unsupported_algorithm(notary: Stubs) -> None:
    assert code_of(lambda: create(notary, "rsa")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: create(notary, "")) == grpc.StatusCode.INVALID_ARGUMENT


def test_sign_rules(notary_daemon: Daemon, notary: Stubs) -> None:
    created = create(notary)
    notary_id = created.keyInfo.keyID.ID
    # notary-server's grant is `sign`: arbitrary bytes (sign-raw) are refused ...
    assert code_of(lambda: sign(notary, notary_id, b"\x01" * 32)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # ... and so is metadata of another role with the timestamp key.
    assert code_of(lambda: sign(notary, notary_id, timestamp_content(kind="Root"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: sign(notary, notary_id, b"")) == grpc.StatusCode.INVALID_ARGUMENT
    # Duplicate keys: readers disagree on which "expires" counts, so nothing is signed.
    twice = timestamp_content().replace(b'"_type"', b'"expires":"2000-01-01T00:00:00Z","_type"')
    assert twice.count(b'"expires"') == 2
    assert code_of(lambda: sign(notary, notary_id, twice)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: sign(notary, "0" * 64, timestamp_content())) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code_of(lambda: sign(notary, "", timestamp_content())) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: notary.keys.GetKeyInfo(pb.KeyID(ID="0" * 64), timeout=10)) == (
        grpc.StatusCode.NOT_FOUND
    )
    key_id = linked_key_id(notary_daemon, notary_id)
    refused = [r for r in audit_rows(notary_daemon) if r[3] == key_id and r[2] == "denied"]
    assert [r[1] for r in refused] == ["sign-raw", "sign-raw"]
    payload_digest = hashlib.sha256(b"\x01" * 32).hexdigest()
    with sqlite3.connect(notary_daemon.state / "audit.db") as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM audit WHERE payload_sha256 = ? AND outcome = 'denied'",
                [payload_digest],
            ).fetchone()[0]
            >= 1
        )


def test_other_principals_may_not_use_notary_keys(notary_daemon: Daemon, notary: Stubs) -> None:
    created = create(notary)
    notary_id = created.keyInfo.keyID.ID
    with notary_daemon.channel("alice") as channel:
        alice = Stubs(channel)
        assert code_of(lambda: sign(alice, notary_id, timestamp_content())) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: alice.keys.GetKeyInfo(pb.KeyID(ID=notary_id), timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: create(alice)) == grpc.StatusCode.PERMISSION_DENIED


def test_delete_is_a_separate_permission(notary_daemon: Daemon, notary: Stubs) -> None:
    created = create(notary)
    notary_id = created.keyInfo.keyID.ID
    key_id = linked_key_id(notary_daemon, notary_id)
    object_id = registry_row(notary_daemon, key_id)[0]

    # notary-signer lets any client delete any key; here notary-server may not.
    assert code_of(lambda: notary.keys.DeleteKey(pb.KeyID(ID=notary_id), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # ... not even a key that does not exist (the answer would tell which IDs exist).
    assert code_of(lambda: notary.keys.DeleteKey(pb.KeyID(ID="e" * 64), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    sign(notary, notary_id, timestamp_content())  # still there

    with notary_daemon.channel(OPS) as channel:
        ops = Stubs(channel)
        ops.keys.DeleteKey(pb.KeyID(ID=notary_id), timeout=10)
        ops.keys.DeleteKey(pb.KeyID(ID=notary_id), timeout=10)  # again: succeeds, as notary
        ops.keys.DeleteKey(pb.KeyID(ID="f" * 64), timeout=10)  # unknown: succeeds, as notary
    assert code_of(lambda: sign(notary, notary_id, timestamp_content())) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code_of(lambda: notary.keys.GetKeyInfo(pb.KeyID(ID=notary_id), timeout=10)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert registry_row(notary_daemon, key_id)[4] == "destroyed"
    assert token_attributes(notary_daemon, object_id) is None
    outcomes = [(r[0], r[2]) for r in audit_rows(notary_daemon) if r[1] == "destroy"]
    assert (NOTARY, "denied") in outcomes and (OPS, "allowed") in outcomes
    # Three deletes answered OK, three entries, each `allowed` (none says the key was
    # already gone as a failure while the answer said OK).
    by_ops = [r for r in audit_rows(notary_daemon) if r[0] == OPS and r[1] == "destroy"][-3:]
    assert [r[2] for r in by_ops] == ["allowed"] * 3, by_ops
    assert by_ops[0][3] == by_ops[1][3] == key_id
    assert "already destroyed" in by_ops[1][7] and "unknown" in by_ops[2][7]


def test_keys_are_shared_by_worker_processes(tmp_path: Path) -> None:
    """A key created through one worker signs through every other (one port, N workers)."""
    with running_daemon(tmp_path, clients=["admin"], workers=2) as daemon:
        with daemon.channel("admin") as channel:
            created = create(Stubs(channel))
        notary_id = created.keyInfo.keyID.ID
        for version in range(12):  # a new connection each time: spread over the workers
            with daemon.channel("admin") as channel:
                content = timestamp_content(version)
                signature = sign(Stubs(channel), notary_id, content)
            assert nkeys.verify("ecdsa", created.publicKey, signature.content, content)
        daemon.wait_log("worker 1")


def test_rate_limits_apply(tmp_path: Path) -> None:
    policy = POLICY + f'\n[rate_limits]\n"{NOTARY}" = {{ rate = 0.01, burst = 3 }}\n'
    with running_daemon(tmp_path, clients=["admin", NOTARY], policy=policy) as daemon:
        with daemon.channel(NOTARY) as channel:
            stubs = Stubs(channel)
            notary_id = create(stubs).keyInfo.keyID.ID
            for version in range(3):
                sign(stubs, notary_id, timestamp_content(version))
            assert code_of(lambda: sign(stubs, notary_id, timestamp_content(9))) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )
        refused = [r for r in audit_rows(daemon) if r[1] == "sign" and r[2] == "denied"]
        assert len(refused) == 1 and refused[0][6] == "RESOURCE_EXHAUSTED"


def test_retired_key_answers_but_no_longer_signs(notary_daemon: Daemon, notary: Stubs) -> None:
    from signer_api.v1 import signer_pb2 as v1
    from signer_api.v1 import signer_pb2_grpc as v1_grpc

    created = create(notary)
    notary_id = created.keyInfo.keyID.ID
    with notary_daemon.channel(OPS) as channel:
        v1_grpc.KeyServiceStub(channel).RetireKey(
            v1.RetireKeyRequest(key_id=linked_key_id(notary_daemon, notary_id)), timeout=10
        )
    info = notary.keys.GetKeyInfo(pb.KeyID(ID=notary_id), timeout=10)
    assert info.publicKey == created.publicKey
    assert code_of(lambda: sign(notary, notary_id, timestamp_content())) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_token_outage_shows_in_notary_health_and_heals(tmp_path: Path) -> None:
    """notary-server's health check follows the token; requests fail UNAVAILABLE meanwhile."""
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    with (
        running_daemon(tmp_path, clients=["admin"]) as daemon,
        daemon.channel("admin") as channel,
    ):
        stubs = Stubs(channel)
        created = create(stubs)
        notary_id = created.keyInfo.keyID.ID
        tokens = Path(daemon.env["SOFTHSM2_CONF"]).parent / "tokens"
        away = tokens.with_name("tokens.pulled")
        tokens.rename(away)
        try:
            daemon.wait_serving(timeout=10, want=not_serving)
            assert daemon.health("grpc.health.v1.Health.Overall") == not_serving
            assert daemon.health("grpc.health.v1.Health.Signer") == not_serving
            assert code_of(lambda: sign(stubs, notary_id, timestamp_content())) == (
                grpc.StatusCode.UNAVAILABLE
            )
        finally:
            away.rename(tokens)
        daemon.wait_serving(timeout=20, want=serving)
        assert daemon.health("grpc.health.v1.Health.Overall") == serving
        signature = sign(stubs, notary_id, timestamp_content())
        assert nkeys.verify("ecdsa", created.publicKey, signature.content, timestamp_content())


def test_notary_section_of_the_config(tmp_path: Path) -> None:
    with (
        running_daemon(
            tmp_path / "roles", clients=["admin"], extra_config='[notary]\nroles = ["timestamp"]\n'
        ) as daemon,
        daemon.channel("admin") as channel,
    ):
        stubs = Stubs(channel)
        create(stubs, role="timestamp")
        assert code_of(lambda: create(stubs, role="snapshot")) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with (
        running_daemon(
            tmp_path / "off", clients=["admin"], extra_config="[notary]\nenabled = false\n"
        ) as daemon,
        daemon.channel("admin") as channel,
    ):
        assert code_of(lambda: create(Stubs(channel))) == grpc.StatusCode.UNIMPLEMENTED
