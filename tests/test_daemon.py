"""signer_api.v1 end to end: a real SoftHSM token, a real daemon, real mutual TLS.

Every RPC, every algorithm (verified with cryptography and securesystemslib), every bad
input with its precise status, and the audit row each request leaves.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from grpc_health.v1 import health_pb2
from securesystemslib.signer import Signature, SSlibKey

from harness import Daemon, audit_rows, object_id_of, read_token_objects
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc
from signer_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from signer_client.client import tuf_key

ALGORITHMS = ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ed25519", "rsassa-pss-sha256"]
PAYLOAD = b'{"_type":"targets","expires":"2030-01-01T00:00:00Z","targets":{},"version":1}'


def verify_with_cryptography(key: pb.Key, signature: bytes, data: bytes) -> None:
    public = load_pem_public_key(key.public_key_pem.encode())
    if key.scheme.startswith("ecdsa"):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        digest = hashes.SHA256() if key.scheme.endswith("256") else hashes.SHA384()
        public.verify(signature, data, ec.ECDSA(digest))
    elif key.scheme == "ed25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, data)
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == 3072
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, data, pss, hashes.SHA256())


def sslib_verify(key: pb.Key, signature: bytes, data: bytes) -> None:
    tuf_key(key).verify_signature(Signature(key.key_id, signature.hex()), data)


@pytest.fixture(scope="module")
def keys(daemon: Daemon) -> dict[str, pb.Key]:
    client = daemon.client()
    return {
        alg: client.create_key(f"test-{alg}", alg, role="targets", repository="example/app")
        for alg in ALGORITHMS
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_created_key_describes_itself(keys: dict[str, pb.Key], algorithm: str) -> None:
    key = keys[algorithm]
    assert key.scheme == algorithm
    assert (
        key.keytype
        == {
            "ecdsa-sha2-nistp256": "ecdsa",
            "ecdsa-sha2-nistp384": "ecdsa",
            "ed25519": "ed25519",
            "rsassa-pss-sha256": "rsa",
        }[algorithm]
    )
    # key_id is the TUF keyid: sha256 of the canonical JSON of the securesystemslib key dict.
    assert hashlib.sha256(key.tuf_key_json.encode()).hexdigest() == key.key_id
    key_dict = json.loads(key.tuf_key_json, strict=False)
    assert key_dict["scheme"] == algorithm
    assert SSlibKey.from_dict(key.key_id, dict(key_dict)).keyid == key.key_id
    assert (
        key.state == pb.KEY_STATE_ACTIVE
        and key.role == "targets"
        and key.repository == "example/app"
    )
    assert key.created_at.seconds > 0
    assert key.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sign_verifies_with_cryptography_and_securesystemslib(
    daemon: Daemon, keys: dict[str, pb.Key], algorithm: str
) -> None:
    key = keys[algorithm]
    response = daemon.client().sign(key.key_id, PAYLOAD)
    assert response.key_id == key.key_id and response.scheme == algorithm
    verify_with_cryptography(key, response.signature, PAYLOAD)
    sslib_verify(key, response.signature, PAYLOAD)
    with pytest.raises(Exception):  # the same signature must not verify other bytes
        sslib_verify(key, response.signature, PAYLOAD + b" ")
    rows = audit_rows(
        daemon,
        "key_id = ? AND payload_sha256 = ? AND outcome = 'allowed'",
        (key.key_id, hashlib.sha256(PAYLOAD).hexdigest()),
    )
    assert rows and rows[-1]["principal"] == "admin" and rows[-1]["operation"] == "sign"
    assert rows[-1]["role"] == "targets"


@pytest.mark.parametrize(
    "algorithm", ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "rsassa-pss-sha256"]
)
def test_sign_prehashed_digest(daemon: Daemon, keys: dict[str, pb.Key], algorithm: str) -> None:
    key = keys[algorithm]
    digest = hashlib.new("sha384" if algorithm.endswith("384") else "sha256", PAYLOAD).digest()
    response = daemon.client().sign_digest(key.key_id, digest)
    sslib_verify(key, response.signature, PAYLOAD)  # a digest signature verifies the payload


def test_digest_rejected_for_ed25519_and_wrong_length(
    daemon: Daemon, keys: dict[str, pb.Key]
) -> None:
    client = daemon.client()
    with pytest.raises(InvalidArgumentError, match="signs whole messages"):
        client.sign_digest(keys["ed25519"].key_id, hashlib.sha256(PAYLOAD).digest())
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        client.sign_digest(keys["ecdsa-sha2-nistp256"].key_id, b"\x00" * 20)


def test_private_keys_are_sensitive_and_never_extractable_in_the_token(
    daemon: Daemon, keys: dict[str, pb.Key]
) -> None:
    objects = read_token_objects(daemon)
    for key in keys.values():
        object_id = object_id_of(daemon, key.key_id)
        (private,) = [o for o in objects if o["id"] == object_id and o["class"] == "private"]
        assert private["sensitive"] is True
        assert private["extractable"] is False
        assert private["private"] is True
        assert private["token"] is True
        assert private["always_sensitive"] is True
        assert private["never_extractable"] is True
        assert private["local"] is True  # generated inside the token, never imported
        assert private["value_readable"] == "AttributeSensitive"
        assert [o for o in objects if o["id"] == object_id and o["class"] == "public"]


def test_get_and_list_keys(daemon: Daemon, keys: dict[str, pb.Key]) -> None:
    client = daemon.client()
    key = keys["ed25519"]
    assert client.get_key(key.key_id) == key
    listed = {k.key_id for k in client.list_keys(role="targets", repository="example/app")}
    assert {k.key_id for k in keys.values()} <= listed
    assert client.list_keys(role="no-such-role") == []
    assert key.key_id not in {k.key_id for k in client.list_keys(state="retired")}


def test_list_keys_pages_through_every_key_once(daemon: Daemon) -> None:
    """More keys than a page: each page at most page_size, every key once, in creation
    order; the client follows the pages itself; a key made between pages is not lost."""
    client = daemon.client()
    repo = "paging/app"
    made = [client.create_key(f"page-{i}", "ed25519", "targets", repo).key_id for i in range(7)]
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = client.keys.ListKeys(
            pb.ListKeysRequest(repository=repo, page_size=3, page_token=token), timeout=10
        )
        seen += [k.key_id for k in page.keys]
        sizes.append(len(page.keys))
        token = page.next_page_token
        if len(seen) == 3:
            made.append(client.create_key("page-late", "ed25519", "targets", repo).key_id)
        if not token:
            break
    assert seen == made and sizes == [3, 3, 2]
    assert [k.key_id for k in client.list_keys(repository=repo, page_size=2)] == made
    assert [k.key_id for k in client.list_keys(repository=repo)] == made  # default page size
    everything = client.keys.ListKeys(pb.ListKeysRequest(page_size=10**9), timeout=10)
    assert set(made) <= {k.key_id for k in everything.keys}  # over the maximum: the maximum


@pytest.mark.parametrize(
    "token",
    ["not a token", "eyJhZnRlciI6MX0", "!!!", "e30", "W10"],  # garbage, {"after":1}, {}, []
)
def test_a_page_token_the_daemon_did_not_make_is_invalid_argument(
    daemon: Daemon, token: str
) -> None:
    client = daemon.client()
    with pytest.raises(grpc.RpcError) as info:
        client.keys.ListKeys(pb.ListKeysRequest(page_token=token), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in info.value.details()
    assert daemon.health() == 1  # and the daemon still serves


def test_a_page_token_is_only_good_for_its_filter(daemon: Daemon) -> None:
    client = daemon.client()
    for i in range(3):
        client.create_key(f"filter-{i}", "ed25519", "snapshot", "paging/filter")
    first = client.keys.ListKeys(
        pb.ListKeysRequest(repository="paging/filter", page_size=1), timeout=10
    )
    assert first.next_page_token
    with pytest.raises(grpc.RpcError) as info:
        client.keys.ListKeys(
            pb.ListKeysRequest(repository="paging/other", page_token=first.next_page_token),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another filter" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.keys.ListKeys(pb.ListKeysRequest(page_size=-1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert daemon.health() == 1


def test_retire_stops_signing_but_keeps_public_key(daemon: Daemon) -> None:
    client = daemon.client()
    key = client.create_key("to-retire", "ecdsa-sha2-nistp256", "snapshot")
    retired = client.retire_key(key.key_id)
    assert retired.state == pb.KEY_STATE_RETIRED and retired.retired_at.seconds > 0
    assert client.get_key(key.key_id).public_key_pem == key.public_key_pem
    with pytest.raises(FailedPreconditionError, match="retired"):
        client.sign(key.key_id, PAYLOAD)
    with pytest.raises(FailedPreconditionError):
        client.retire_key(key.key_id)
    assert key.key_id in {k.key_id for k in client.list_keys(state="retired")}
    rows = audit_rows(daemon, "key_id = ? AND operation = 'sign'", (key.key_id,))
    assert rows[-1]["outcome"] == "failed" and rows[-1]["code"] == "FAILED_PRECONDITION"


def test_destroy_removes_objects_from_token(daemon: Daemon) -> None:
    client = daemon.client()
    key = client.create_key("to-destroy", "ed25519", "timestamp")
    object_id = object_id_of(daemon, key.key_id)
    assert any(o["id"] == object_id for o in read_token_objects(daemon))
    with pytest.raises(InvalidArgumentError, match="confirm"):
        client.destroy_key(key.key_id, confirm="yes")
    assert any(o["id"] == object_id for o in read_token_objects(daemon))  # still there
    destroyed = client.destroy_key(key.key_id, confirm=key.key_id)
    assert destroyed.state == pb.KEY_STATE_DESTROYED
    assert not any(o["id"] == object_id for o in read_token_objects(daemon))
    with pytest.raises(FailedPreconditionError):
        client.sign(key.key_id, PAYLOAD)
    with pytest.raises(FailedPreconditionError, match="already destroyed"):
        client.destroy_key(key.key_id, confirm=key.key_id)
    assert audit_rows(
        daemon, "key_id = ? AND operation = 'destroy' AND outcome = 'allowed'", (key.key_id,)
    )


def test_sign_batch_reports_each_item(daemon: Daemon, keys: dict[str, pb.Key]) -> None:
    key = keys["ecdsa-sha2-nistp256"]
    stub = pb_grpc.SigningServiceStub(daemon.channel())
    items = [
        pb.SignBatchItem(payload=b"one"),
        pb.SignBatchItem(key_id="0" * 64, payload=b"two"),
        pb.SignBatchItem(payload=b""),
        pb.SignBatchItem(digest=b"short"),
        pb.SignBatchItem(key_id=keys["ed25519"].key_id, payload=b"five"),
        pb.SignBatchItem(payload=b"six"),
    ]
    response = stub.SignBatch(pb.SignBatchRequest(key_id=key.key_id, items=items), timeout=10)
    codes = [r.status.code for r in response.results]
    assert codes == [
        0,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        0,
        0,
    ]
    sslib_verify(key, response.results[0].signature, b"one")
    sslib_verify(keys["ed25519"], response.results[4].signature, b"five")
    sslib_verify(key, response.results[5].signature, b"six")
    assert "no key" in response.results[1].status.message
    assert response.results[1].signature == b""


def test_a_large_batch_reports_each_item_as_a_small_one_does(
    daemon: Daemon, keys: dict[str, pb.Key]
) -> None:
    """Over 64 items a batch is checked in a thread, stage by stage over its items
    (authorisation, then each guard over all, then what the token signs): each refusal
    lands on its own item as in a small batch, and the rest are signed."""
    from authz_helpers import tuf_payload

    key = keys["ecdsa-sha2-nistp256"]
    newer, older = tuf_payload("targets", 5), tuf_payload("targets", 4)
    daemon.client().sign(key.key_id, newer)
    odd = {
        3: (pb.SignBatchItem(key_id="0" * 64, payload=b"x"), grpc.StatusCode.NOT_FOUND),
        10: (pb.SignBatchItem(digest=b"short"), grpc.StatusCode.INVALID_ARGUMENT),
        20: (pb.SignBatchItem(payload=older), grpc.StatusCode.PERMISSION_DENIED),  # rollback
        30: (
            pb.SignBatchItem(key_id=keys["ed25519"].key_id, digest=b"d" * 32),
            grpc.StatusCode.INVALID_ARGUMENT,  # EdDSA signs whole messages
        ),
        40: (pb.SignBatchItem(payload=newer), grpc.StatusCode.OK),  # the same bytes again
    }
    items = [odd[n][0] if n in odd else pb.SignBatchItem(payload=b"item-%d" % n) for n in range(70)]
    stub = pb_grpc.SigningServiceStub(daemon.channel())
    response = stub.SignBatch(pb.SignBatchRequest(key_id=key.key_id, items=items), timeout=20)
    codes = [r.status.code for r in response.results]
    assert codes == [odd[n][1].value[0] if n in odd else 0 for n in range(70)]
    assert "lower than version 5" in response.results[20].status.message
    assert "payload, not digest" in response.results[30].status.message
    sslib_verify(key, response.results[40].signature, newer)
    for n in range(70):
        if n not in odd:
            sslib_verify(key, response.results[n].signature, b"item-%d" % n)
    assert daemon.health() == health_pb2.HealthCheckResponse.SERVING


def test_sign_batch_many_items_in_order(daemon: Daemon, keys: dict[str, pb.Key]) -> None:
    key = keys["ecdsa-sha2-nistp256"]
    payloads = [b"item-%d" % i for i in range(200)]
    results = daemon.client().sign_batch(key.key_id, payloads)
    assert len(results) == 200 and all(r.ok for r in results)
    for payload, result in zip(payloads, results, strict=True):
        sslib_verify(key, result.signature, payload)


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c, k: c.sign("f" * 64, PAYLOAD), grpc.StatusCode.NOT_FOUND, "no key"),
        (lambda c, k: c.sign("", PAYLOAD), grpc.StatusCode.INVALID_ARGUMENT, "key_id is required"),
        (lambda c, k: c.sign(k, b""), grpc.StatusCode.INVALID_ARGUMENT, "payload is empty"),
        (lambda c, k: c.get_key("nope"), grpc.StatusCode.NOT_FOUND, "no key"),
        (lambda c, k: c.retire_key("f" * 64), grpc.StatusCode.NOT_FOUND, "no key"),
        (lambda c, k: c.destroy_key("f" * 64, "f" * 64), grpc.StatusCode.NOT_FOUND, "no key"),
        (
            lambda c, k: c.keys.CreateKey(
                pb.CreateKeyRequest(label="x", algorithm=99, role="targets")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown or unspecified algorithm",
        ),
        (
            lambda c, k: c.keys.CreateKey(pb.CreateKeyRequest(label="x", role="targets")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown or unspecified algorithm",
        ),
        (
            lambda c, k: c.create_key("", "ed25519", "targets"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "label",
        ),
        (lambda c, k: c.create_key("ok", "ed25519", ""), grpc.StatusCode.INVALID_ARGUMENT, "role"),
        (
            lambda c, k: c.create_key("ok", "ed25519", "../etc"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "role",
        ),
        (
            lambda c, k: c.signing.Sign(pb.SignRequest(key_id=k)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "send a payload or a digest",
        ),
        (
            lambda c, k: c.signing.SignBatch(pb.SignBatchRequest(key_id=k)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "items is empty",
        ),
        (
            lambda c, k: c.keys.ListKeys(pb.ListKeysRequest(state=42)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown key state",
        ),
    ],
)
def test_bad_input_gets_precise_status(
    daemon: Daemon, keys: dict[str, pb.Key], call, code: grpc.StatusCode, message: str
) -> None:
    client = daemon.client()
    with pytest.raises((grpc.RpcError, Exception)) as info:
        call(client, keys["ed25519"].key_id)
    exc = info.value
    got = exc.code() if isinstance(exc, grpc.RpcError) else exc.code  # type: ignore[union-attr]
    text = exc.details() if isinstance(exc, grpc.RpcError) else exc.message  # type: ignore[union-attr]
    assert got == code, text
    assert message in text


def test_malformed_request_bytes_are_invalid_argument(daemon: Daemon) -> None:
    channel = daemon.channel()
    for method in ("/signer_api.v1.SigningService/Sign", "/signer_api.v1.KeyService/CreateKey"):
        raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in info.value.details()
    assert daemon.health() == 1  # and the daemon still serves


def test_unknown_method_is_unimplemented(daemon: Daemon) -> None:
    raw = daemon.channel().unary_unary("/signer_api.v1.SigningService/Nope")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_reflection(daemon: Daemon) -> None:
    assert daemon.health("") == 1
    assert daemon.health("signer_api.v1.SigningService") == 1
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel())
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "signer_api.v1.KeyService",
        "signer_api.v1.SigningService",
        "grpc.health.v1.Health",
    } <= names


def test_every_request_is_audited_in_a_chain(daemon: Daemon, keys: dict[str, pb.Key]) -> None:
    client = daemon.client("alice")
    before = len(audit_rows(daemon))
    client.sign(keys["ed25519"].key_id, b"audited payload")
    with pytest.raises(NotFoundError):
        client.sign("e" * 64, b"audited payload")
    rows = audit_rows(daemon)[before:]
    assert [(r["principal"], r["outcome"]) for r in rows] == [
        ("alice", "allowed"),
        ("alice", "failed"),
    ]
    digest = hashlib.sha256(b"audited payload").hexdigest()
    assert all(r["payload_sha256"] == digest for r in rows)
    assert all(b"audited payload".hex() not in json.dumps(r) for r in rows)  # never the payload
    everything = audit_rows(daemon)
    for prev, row in itertools.pairwise(everything):
        assert row["prev_hash"] == prev["hash"] and row["seq"] == prev["seq"] + 1


def test_each_signed_digest_is_named_in_its_audit_entry(
    daemon: Daemon, keys: dict[str, pb.Key]
) -> None:
    """A raw digest's entry says which digest was signed: the SHA-256 one in
    ``payload_sha256`` (it is the artefact's SHA-256), any other in the detail."""
    client = daemon.client("alice")
    p256, p384 = keys["ecdsa-sha2-nistp256"].key_id, keys["ecdsa-sha2-nistp384"].key_id
    before = len(audit_rows(daemon))
    sha256s = [hashlib.sha256(b"artefact-%d" % n).digest() for n in range(3)]
    sha384 = hashlib.sha384(b"artefact").digest()
    client.sign_digest(p256, sha256s[0])
    request = pb.SignBatchRequest(
        items=[pb.SignBatchItem(key_id=p256, digest=d) for d in sha256s[1:]]
        + [pb.SignBatchItem(key_id=p384, digest=sha384), pb.SignBatchItem(key_id=p256, digest=b"x")]
    )
    results = client.signing.SignBatch(request).results
    assert [r.status.code for r in results] == [0, 0, 0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    rows = audit_rows(daemon)[before:]
    assert [(r["operation"], r["outcome"], r["payload_sha256"], r["detail"]) for r in rows[:4]] == [
        ("sign-raw", "allowed", sha256s[0].hex(), ""),
        ("sign-raw", "allowed", sha256s[1].hex(), ""),
        ("sign-raw", "allowed", sha256s[2].hex(), ""),
        ("sign-raw", "allowed", "", f"digest {sha384.hex()}"),
    ]
    refused = rows[4]
    assert (refused["outcome"], refused["payload_sha256"]) == ("failed", "")
    assert (
        refused["detail"].startswith(f"digest {b'x'.hex()}: ") and "32 bytes" in refused["detail"]
    )
    assert daemon.proc.poll() is None


def test_hostile_payloads_get_a_status_not_a_crash(daemon: Daemon, keys: dict[str, pb.Key]) -> None:
    """Deep nesting and huge versions must not escape as INTERNAL or fail a whole batch."""
    key = daemon.client().create_key("hostile", "ecdsa-sha2-nistp256", "timestamp")
    client = daemon.client()
    deep = b'{"_type":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidArgumentError, match="nested deeper"):  # JSON readers choke on it
        client.sign(key.key_id, deep)
    huge = b'{"_type":"timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":%d}' % 2**64
    with pytest.raises(InvalidArgumentError, match="version must be an integer"):
        client.sign(key.key_id, huge)
    fine = b'{"_type":"timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":7}'
    results = client.sign_batch(key.key_id, [huge, deep, fine])
    assert [r.ok for r in results] == [False, False, True]
    assert (
        results[0].error is not None and results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT
    )
    sslib_verify(key, results[2].signature, fine)
    rows = audit_rows(daemon, "key_id = ? AND code = 'INVALID_ARGUMENT'", (key.key_id,))
    assert len(rows) == 4  # the refused payloads, alone and in the batch
