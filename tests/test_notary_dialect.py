"""notary's TUF dialect through plain ``sign`` (signer_api.v1): every rule, both ways.

A real daemon (SoftHSM token, mTLS, a policy file). Payloads are built the way notary
writes them (Go canonical JSON: sorted keys, no whitespace, strings unescaped but for
``"`` and ``\\``; ``expires`` as Go's RFC 3339 with nanoseconds); the expected encoding is
written here with ``json.dumps``, independently of the daemon's encoder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import Daemon, running_daemon
from signer.errors import InvalidArgument
from signer.notary import canonical
from signer.policy.notary import parse_go_time, parse_notary
from signer_client import ClientError

GUN = "registry.example.com/team/app"
OTHER = "registry.example.com/team/other"

POLICY = f"""
[[rules]]
principals = ["admin"]
operations = ["create", "read", "certify", "audit"]

[[rules]]
principals = ["alice", "bob", "carol"]
operations = ["sign", "read", "approve"]
keys = {{ roles = ["root", "targets", "snapshot", "timestamp"] }}

# the build farm: targets/releases and its own delegation, for its GUN only
[[rules]]
principals = ["farm"]
operations = ["sign", "read"]
keys = {{ roles = ["targets/releases", "targets/farm"], repositories = ["{GUN}"] }}

# a signer whose policy has no grant for targets/releases
[[rules]]
principals = ["solo"]
operations = ["sign", "read"]
keys = {{ roles = ["targets/solo"], repositories = ["{GUN}"] }}

[tuf]
max_expiry_days = {{ root = 3650, targets = 1095, "targets/*" = 90, snapshot = 1095 }}

[quorum]
approvals = 2
"""
CLIENTS = ["admin", "alice", "bob", "carol", "farm", "solo"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("dialect"), policy=POLICY, clients=CLIENTS) as d:
        yield d


@pytest.fixture(scope="module")
def clients(served: Daemon) -> Iterator[dict[str, Any]]:
    made = {name: served.client(name) for name in CLIENTS}
    yield made
    for client in made.values():
        client.close()


def go_time(days: float, offset_hours: int = 0) -> str:
    """``expires`` as notary writes it: time.Now().Add(d), nanoseconds, local offset."""
    zone = dt.timezone(dt.timedelta(hours=offset_hours))
    when = dt.datetime.now(zone) + dt.timedelta(days=days)
    text = f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond * 1000 + 123:09d}"
    if offset_hours == 0:
        return text + "Z"
    return f"{text}{offset_hours:+03d}:00"


def notary(
    kind: str, version: int = 1, days: float = 30, expires: str = "", **fields: Any
) -> bytes:
    """A notary ``signed`` object in Go canonical JSON."""
    signed = {"_type": kind, "version": version, "expires": expires or go_time(days), **fields}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def targets(version: int = 1, days: float = 30, name: str = "1.0", **extra: Any) -> bytes:
    files = {name: {"hashes": {"sha256": base64.b64encode(b"\x01" * 32).decode()}, "length": 42}}
    return notary(
        "Targets", version, days, targets=files, delegations={"keys": {}, "roles": []}, **extra
    )


def root(certs: dict[str, str], version: int = 1, days: float = 365) -> bytes:
    keys = {
        keyid: {"keytype": "ecdsa-x509", "keyval": {"private": None, "public": pem_b64}}
        for keyid, pem_b64 in certs.items()
    }
    roles = {
        "root": {"keyids": sorted(certs), "threshold": 1},
        **{r: {"keyids": [], "threshold": 1} for r in ("snapshot", "targets", "timestamp")},
    }
    return notary("Root", version, days, consistent_snapshot=False, keys=keys, roles=roles)


def verify(key: Any, payload: bytes, signature: bytes) -> None:
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))


def refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


def last_row(served: Daemon, key_id: str) -> dict[str, Any]:
    return audit_rows(served.state, "key_id = ? AND operation LIKE 'sign%'", (key_id,))[-1]


# -- the dialect and its encoding ------------------------------------------------------------


def test_detection_requires_go_canonical_bytes() -> None:
    payload = targets(name="a<b>&c\u2028")
    assert parse_notary(payload) is not None  # Go canonical mode writes these raw
    assert canonical.encode(json.loads(payload)) == payload
    assert parse_notary(payload.replace(b"<", b"\\u003c")) is None  # json.Marshal's escaping
    assert parse_notary(b'{"_type": "Targets"}') is None  # whitespace
    assert parse_notary(b'{"_type":"Targets","a":1.5}') is None  # floats: never canonical
    assert parse_notary(b'{"_type":"Targets","a":9007199254740993}') is None  # > 2**53
    assert parse_notary(b'{"_type":"targets"}') is None  # standard TUF spelling
    assert parse_notary(b'{"a":1,"_type":"Targets"}') is None  # not sorted
    with pytest.raises(InvalidArgument):  # JSON readers disagree on: refused outright
        parse_notary(b'{"_type":"Targets","x":1,"x":2}')


def test_go_times() -> None:
    assert parse_go_time("2030-01-02T03:04:05.123456789+02:00") == dt.datetime(
        2030, 1, 2, 1, 4, 5, 123456, dt.UTC
    )
    assert parse_go_time("2030-01-02T03:04:05Z").tzinfo is not None
    for bad in (
        "2030-01-02T03:04:05",
        "2030-01-02T03:04:05.10Z",
        "2030-01-02",
        "2030-13-01T00:00:00Z",
    ):
        with pytest.raises(InvalidArgument):
            parse_go_time(bad)


# -- role binding, expiry, repository ----------------------------------------------------------


def test_targets_key_signs_targets_metadata(served: Daemon, clients: dict[str, Any]) -> None:
    key = clients["admin"].create_key("targets", role="targets", repository=GUN)
    payload = targets(version=1, name="app:<1.0>")
    verify(key, payload, clients["alice"].sign(key.key_id, payload).signature)
    assert last_row(served, key.key_id)["operation"] == "sign"  # not sign-raw

    for kind in ("Root", "Snapshot", "Timestamp"):
        message = refused(lambda k=kind: clients["alice"].sign(key.key_id, notary(k, 5)))
        assert "'Targets'" in message and repr(kind) in message
        assert last_row(served, key.key_id)["outcome"] == "denied"
    # the expiry limit of the role, with Go's offsets and fractions
    message = refused(lambda: clients["alice"].sign(key.key_id, targets(version=2, days=2000)))
    assert "1095" in message
    clients["alice"].sign(key.key_id, notary("Targets", 3, expires=go_time(10, offset_hours=5)))
    for bad in ("2030-1-1T00:00:00Z", "2030-01-01T00:00:00.50Z", "2030-01-01"):
        payload = notary("Targets", 4, expires=bad)
        refused(
            lambda p=payload: clients["alice"].sign(key.key_id, p), grpc.StatusCode.INVALID_ARGUMENT
        )


def test_version_never_goes_back(served: Daemon, clients: dict[str, Any]) -> None:
    alice = clients["alice"]
    key = clients["admin"].create_key("targets-versions", role="targets", repository=GUN)
    v5 = targets(version=5)
    alice.sign(key.key_id, v5)
    alice.sign(key.key_id, v5)  # the same bytes again: fine
    assert "lower than version 5" in refused(lambda: alice.sign(key.key_id, targets(version=4)))
    message = refused(lambda: alice.sign(key.key_id, targets(version=5, name="other")))
    assert "different content" in message
    alice.sign(key.key_id, targets(version=6))
    assert last_row(served, key.key_id)["outcome"] == "allowed"


def test_key_must_be_bound_to_a_gun(clients: dict[str, Any]) -> None:
    key = clients["admin"].create_key("unbound", role="targets")
    message = refused(lambda: clients["alice"].sign(key.key_id, targets()))
    assert "GUN" in message


def test_non_canonical_notary_json_stays_raw(served: Daemon, clients: dict[str, Any]) -> None:
    key = clients["admin"].create_key("targets-raw", role="targets", repository=GUN)
    pretty = json.dumps(json.loads(targets()), indent=1).encode()
    message = refused(lambda: clients["alice"].sign(key.key_id, pretty))
    assert "sign-raw" in message
    assert last_row(served, key.key_id)["operation"] == "sign-raw"


def test_duplicate_keys_are_refused(served: Daemon, clients: dict[str, Any]) -> None:
    """Go canonical JSON but for a repeated key: readers differ on which value counts (a
    last-wins reader sees version 2, or the other target), so the payload is refused as
    JSON, never classified as raw or signed; each refusal audited once."""
    key = clients["admin"].create_key("targets-dup", role="targets", repository=GUN)
    good = targets(version=1)
    top = good.replace(b'"version":1}', b'"version":1,"version":2}')
    assert top != good and top.endswith(b'"version":1,"version":2}')
    files = json.loads(good)["targets"]["1.0"]
    entry = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    nested = good.replace(b'"targets":{"1.0":', b'"targets":{"1.0":' + entry + b',"1.0":')
    assert nested != good
    for payload, name in ((top, "version"), (nested, "1.0")):
        with pytest.raises(InvalidArgument, match="duplicate key"):
            parse_notary(payload)
        message = refused(
            lambda p=payload: clients["alice"].sign(key.key_id, p),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert message == f"payload JSON refused: duplicate key {name!r} in an object"
        rows = audit_rows(
            served.state, "payload_sha256 = ?", (hashlib.sha256(payload).hexdigest(),)
        )
        assert len(rows) == 1, rows
        row = rows[0]
        assert (row["operation"], row["outcome"], row["code"], row["key_id"]) == (
            "sign",
            "failed",  # the audit's word for a request refused for its input
            "INVALID_ARGUMENT",
            key.key_id,
        )
    assert served.proc is not None and served.proc.poll() is None
    served.wait_serving()  # alive, and still signs the well-formed payload
    verify(key, good, clients["alice"].sign(key.key_id, good).signature)


def test_standard_tuf_takes_no_foreign_role_hint(clients: dict[str, Any]) -> None:
    from authz_helpers import tuf_payload

    key = clients["admin"].create_key("tuf-targets", role="targets", repository=GUN)
    clients["alice"].sign(key.key_id, tuf_payload("targets"), role="targets")
    message = refused(
        lambda: clients["alice"].sign(key.key_id, tuf_payload("targets", 2), role="root")
    )
    assert "notary metadata only" in message


# -- delegations and role hints ------------------------------------------------------------------


def test_delegation_key_also_signs_releases(served: Daemon, clients: dict[str, Any]) -> None:
    farm = clients["farm"]
    key = clients["admin"].create_key("farm", role="targets/farm", repository=GUN)
    own, releases = targets(version=3), targets(version=1, name="2.0")
    verify(key, own, farm.sign(key.key_id, own).signature)
    verify(key, releases, farm.sign(key.key_id, releases, role="targets/releases").signature)
    # each role has its own version line: releases v1 after farm v3 was fine; now both move
    results = farm.sign_batch_items(
        [
            (key.key_id, targets(version=4)),
            (key.key_id, targets(version=2, name="3.0"), "targets/releases"),
            (key.key_id, targets(version=1, name="x"), "targets/releases"),  # rollback
        ]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error is not None
    assert results[2].error.code == grpc.StatusCode.PERMISSION_DENIED
    # never another delegation, targets itself, or another type
    for role in ("targets/other", "targets", "root"):
        message = refused(lambda r=role: farm.sign(key.key_id, targets(version=9), role=r))
        assert "'targets/farm'" in message
    refused(lambda: farm.sign(key.key_id, notary("Root", 9), role="targets/releases"))
    refused(
        lambda: farm.sign(key.key_id, targets(version=9), role="bad role!"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_the_policy_decides_who_signs_releases(served: Daemon, clients: dict[str, Any]) -> None:
    key = clients["admin"].create_key("solo", role="targets/solo", repository=GUN)
    clients["solo"].sign(key.key_id, targets())
    message = refused(
        lambda: clients["solo"].sign(key.key_id, targets(version=2), role="targets/releases")
    )
    assert "solo may not sign" in message
    assert last_row(served, key.key_id)["outcome"] == "denied"
    # a top-level targets key never takes the releases hint
    top = clients["admin"].create_key("top", role="targets", repository=GUN)
    refused(lambda: clients["alice"].sign(top.key_id, targets(), role="targets/releases"))


def test_farm_is_limited_to_its_gun(clients: dict[str, Any]) -> None:
    other = clients["admin"].create_key("farm-other", role="targets/farm", repository=OTHER)
    assert "may not sign" in refused(lambda: clients["farm"].sign(other.key_id, targets()))


# -- root: the GUN in the certificates, and quorum ------------------------------------------------


def _root_key(clients: dict[str, Any], label: str, quorum: bool = False) -> tuple[Any, str, str]:
    key = clients["admin"].create_key(label, role="root", repository=GUN, quorum=quorum)
    cert = clients["admin"].issue_certificate(key.key_id, GUN)
    return key, cert.certificate_key_id, base64.b64encode(cert.certificate_pem.encode()).decode()


def _foreign_cert(clients: dict[str, Any]) -> tuple[str, str]:
    other = clients["admin"].create_key("other-root", role="root", repository=OTHER)
    cert = clients["admin"].issue_certificate(other.key_id, OTHER)
    return cert.certificate_key_id, base64.b64encode(cert.certificate_pem.encode()).decode()


def test_root_certificates_must_name_the_gun(served: Daemon, clients: dict[str, Any]) -> None:
    key, cert_id, pem = _root_key(clients, "root")
    payload = root({cert_id: pem})
    verify(key, payload, clients["alice"].sign(key.key_id, payload).signature)

    foreign_id, foreign_pem = _foreign_cert(clients)
    message = refused(
        lambda: clients["alice"].sign(key.key_id, root({cert_id: pem, foreign_id: foreign_pem}, 2))
    )
    assert OTHER in message and GUN in message
    assert last_row(served, key.key_id)["outcome"] == "denied"
    broken = root({cert_id: base64.b64encode(b"not a certificate").decode()}, 3)
    refused(lambda: clients["alice"].sign(key.key_id, broken), grpc.StatusCode.INVALID_ARGUMENT)
    message = refused(lambda: clients["alice"].sign(key.key_id, root({cert_id: pem}, 4, days=5000)))
    assert "3650" in message


def test_quorum_root_through_request_approve_sign(served: Daemon, clients: dict[str, Any]) -> None:
    key, cert_id, pem = _root_key(clients, "root-quorum", quorum=True)
    payload = root({cert_id: pem})
    assert "quorum" in refused(
        lambda: clients["alice"].sign(key.key_id, payload), grpc.StatusCode.FAILED_PRECONDITION
    )
    # refused at request time: the wrong GUN never reaches the approvers
    foreign_id, foreign_pem = _foreign_cert(clients)
    refused(
        lambda: clients["alice"].request_signature(
            key.key_id, root({foreign_id: foreign_pem}), role="root"
        )
    )
    request = clients["alice"].request_signature(key.key_id, payload, "init", role="root")
    digest = hashlib.sha256(payload).hexdigest()
    clients["bob"].approve(request.request_id, digest)
    clients["carol"].approve(request.request_id, digest)
    signed = clients["alice"].sign(key.key_id, payload, request.request_id, role="root")
    verify(key, payload, signed.signature)
    # after it, an older root cannot even be requested
    refused(lambda: clients["alice"].request_signature(key.key_id, root({cert_id: pem}, 1, 300)))


# -- the documented policy -----------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["notary.md", "dct.md"])
def test_documented_dct_policy(doc: str) -> None:
    """The DCT policy block in docs/notary.md and docs/dct.md loads and grants exactly
    what the docs say."""
    from pathlib import Path

    from signer.errors import PermissionDenied
    from signer.identity import Principal
    from signer.policy import Operation, Resource
    from signer.policy.file import FilePolicy

    text = (Path(__file__).resolve().parent.parent / "docs" / doc).read_text()
    block = text.split("<!-- dct-policy -->\n```toml\n", 1)[1].split("```", 1)[0]
    policy = FilePolicy.parse(block, f"docs/{doc}")
    app = "registry.example.com/apps/web"

    def allowed(who: str, op: Operation, role: str, repo: str = app, source: str = "cn") -> bool:
        try:
            policy.authorize(Principal(who, source, ""), op, Resource("k", role, repo))
            return True
        except PermissionDenied:
            return False

    farm = "spiffe://example.com/build-farm"
    for role in ("targets/releases", "targets/farm"):
        assert allowed(farm, Operation.SIGN, role, source="uri")
    for role in ("root", "targets", "targets/other", "snapshot"):
        assert not allowed(farm, Operation.SIGN, role, source="uri")
    assert not allowed(farm, Operation.SIGN, "targets/releases", "registry.example.com/x")
    assert not allowed(farm, Operation.SIGN_RAW, "targets/farm", source="uri")
    assert allowed("alice", Operation.SIGN, "root") and allowed("alice", Operation.CERTIFY, "root")
    assert allowed("carol", Operation.APPROVE, "root") and not allowed(
        "carol", Operation.SIGN, "root"
    )
    server = "notary-server.example.com"
    for role in ("timestamp", "snapshot"):
        assert allowed(server, Operation.CREATE, role, "any/gun", source="dns")
        assert allowed(server, Operation.SIGN, role, "any/gun", source="dns")
    for role in ("root", "targets", "targets/releases"):
        assert not allowed(server, Operation.CREATE, role, app, source="dns")
        assert not allowed(server, Operation.SIGN, role, app, source="dns")
    assert not allowed(server, Operation.DESTROY, "timestamp", app, source="dns")
    assert policy.quorum.approvals == 2
