"""IssueCertificate: notary's self-signed root certificate, signed inside the token.

A real daemon (SoftHSM token, mTLS, a policy file). The certificate must verify with
``cryptography`` and with ``openssl``, follow notary's template, carry the key the token
holds, and show up with notary's key IDs in GetKey/ListKeys. Refusals are audited.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import Daemon, running_daemon
from signer_client import ClientError

GUN = "registry.example.com/team/app"

POLICY = """
[[rules]]
principals = ["admin"]
operations = ["create", "read", "retire", "certify"]

[[rules]]
principals = ["alice"]
operations = ["read"]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("certs"), policy=POLICY, clients=["admin", "alice"]
    ) as d:
        yield d


@pytest.fixture(scope="module")
def admin(served: Daemon) -> Iterator[Any]:
    with served.client("admin") as client:
        yield client


def _notary_id(keytype: str, public: bytes) -> str:
    """notary's TUFKey.ID(), written out independently of the daemon's code."""
    body = (
        '{"keytype":"'
        + keytype
        + '","keyval":{"private":null,"public":"'
        + base64.b64encode(public).decode()
        + '"}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


def test_root_certificate_follows_notarys_template(admin: Any, served: Daemon) -> None:
    key = admin.create_key("root", role="root", repository=GUN)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issued = admin.issue_certificate(key.key_id, GUN)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())

    cert.verify_directly_issued_by(cert)  # self-signed, by the token's key
    assert cert.public_key() == serialization.load_pem_public_key(key.public_key_pem.encode())
    assert cert.version is x509.Version.v3
    cn = NameOID.COMMON_NAME
    assert [a.value for a in cert.subject.get_attributes_for_oid(cn)] == [GUN]
    assert len(cert.subject) == 1 and cert.issuer == cert.subject
    assert isinstance(cert.signature_hash_algorithm, type(cert.signature_hash_algorithm))
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"  # ecdsa-sha256
    assert 0 < cert.serial_number < 2**128
    assert before <= cert.not_valid_before_utc <= before + dt.timedelta(minutes=1)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3650)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not (usage.value.key_cert_sign or usage.value.crl_sign)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CODE_SIGNING]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    assert len(cert.extensions) == 3  # as Go's x509 writes notary's template: nothing more

    # notary's key IDs: the ecdsa-x509 key of the PEM, and the bare key (canonical ID).
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert issued.certificate_key_id == _notary_id("ecdsa-x509", issued.certificate_pem.encode())
    assert issued.notary_key_id == _notary_id("ecdsa", spki)
    assert issued.key_id == key.key_id
    assert issued.not_after.seconds - issued.not_before.seconds == 3650 * 86400

    # Kept with the key: GetKey and ListKeys show it and both IDs.
    shown = admin.get_key(key.key_id)
    assert shown.certificate_pem == issued.certificate_pem
    assert shown.certificate_key_id == issued.certificate_key_id
    assert shown.notary_key_id == issued.notary_key_id
    (listed,) = [k for k in admin.list_keys(repository=GUN) if k.key_id == key.key_id]
    assert listed.certificate_key_id == issued.certificate_key_id

    # A second certificate replaces the first as the key's current one.
    again = admin.issue_certificate(key.key_id, GUN, validity_days=30)
    assert again.certificate_pem != issued.certificate_pem
    assert admin.get_key(key.key_id).certificate_pem == again.certificate_pem

    rows = audit_rows(served.state, "operation = 'certify' AND key_id = ?", (key.key_id,))
    assert [r["outcome"] for r in rows] == ["allowed", "allowed"]
    assert issued.certificate_key_id in rows[0]["detail"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_certificate(admin: Any, tmp_path: Path) -> None:
    key = admin.create_key("root-openssl", role="root", repository=GUN)
    pem = tmp_path / "root.pem"
    pem.write_text(admin.issue_certificate(key.key_id, GUN).certificate_pem)
    result = subprocess.run(
        ["openssl", "verify", "-partial_chain", "-trusted", str(pem), str(pem)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr


def test_p384_and_unbound_keys(admin: Any) -> None:
    key = admin.create_key("p384", "ecdsa-sha2-nistp384", role="root")
    issued = admin.issue_certificate(key.key_id, "any.example/gun", validity_days=1)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.3"  # sha384
    assert issued.notary_key_id == ""  # notary's "ecdsa" keys are P-256
    assert admin.get_key(key.key_id).notary_key_id == ""


def test_key_ids_for_every_notary_algorithm(admin: Any) -> None:
    p256 = admin.create_key("ids-p256", role="targets")
    der = serialization.load_pem_public_key(p256.public_key_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert p256.notary_key_id == _notary_id("ecdsa", der)
    ed = admin.create_key("ids-ed", "ed25519", role="targets")
    raw = serialization.load_pem_public_key(ed.public_key_pem.encode()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert ed.notary_key_id == _notary_id("ed25519", raw)
    assert ed.certificate_pem == "" and ed.certificate_key_id == ""
    rsa = admin.create_key("ids-rsa", "rsassa-pss-sha256", role="targets")
    assert rsa.notary_key_id == ""


def test_cli_shows_notary_key_ids(admin: Any, served: Daemon) -> None:
    key = admin.create_key("cli-root", role="root", repository=GUN)
    issued = admin.issue_certificate(key.key_id, GUN)
    env = dict(served.env, **_client_env(served))
    listed = subprocess.run(
        [sys.executable, "-m", "signer.cli", "keys", "list", "--repository", GUN],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert f"notary {key.notary_key_id[:12]}" in listed
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "signer.cli", "keys", "show", key.key_id],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert shown["notary_key_id"] == key.notary_key_id
    assert shown["certificate_key_id"] == issued.certificate_key_id


def _client_env(served: Daemon) -> dict[str, str]:
    import os

    config = served.client_config("admin")
    root = Path(__file__).resolve().parent.parent
    return {
        "SIGNER_ADDRESS": config.address,
        "SIGNER_CA": str(config.ca),
        "SIGNER_CERT": str(config.cert),
        "SIGNER_KEY": str(config.key),
        "PYTHONPATH": f"{root}:{root / 'clients'}:" + os.environ.get("PYTHONPATH", ""),
    }


def test_a_bound_key_certifies_only_its_gun(admin: Any, served: Daemon) -> None:
    key = admin.create_key("root-bound", role="root", repository=GUN)
    message = _refused(
        lambda: admin.issue_certificate(key.key_id, "evil.example/other"),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert GUN in message and "evil.example/other" in message
    rows = audit_rows(served.state, "operation = 'certify' AND key_id = ?", (key.key_id,))
    assert [r["outcome"] for r in rows] == ["denied"]
    assert admin.get_key(key.key_id).certificate_pem == ""


def test_policy_and_state_refusals_are_audited(admin: Any, served: Daemon) -> None:
    key = admin.create_key("root-refused", role="root", repository=GUN)
    with served.client("alice") as alice:
        message = _refused(
            lambda: alice.issue_certificate(key.key_id, GUN), grpc.StatusCode.PERMISSION_DENIED
        )
    assert "certify" in message
    rows = audit_rows(served.state, "operation = 'certify' AND principal = 'alice'")
    assert [(r["key_id"], r["outcome"]) for r in rows] == [(key.key_id, "denied")]

    ed = admin.create_key("ed-root", "ed25519", role="root", repository=GUN)
    assert "ECDSA" in _refused(
        lambda: admin.issue_certificate(ed.key_id, GUN), grpc.StatusCode.FAILED_PRECONDITION
    )
    admin.retire_key(key.key_id)
    assert "retired" in _refused(
        lambda: admin.issue_certificate(key.key_id, GUN), grpc.StatusCode.FAILED_PRECONDITION
    )
    for bad in ("", "bad gun with spaces"):
        _refused(
            lambda b=bad: admin.issue_certificate(ed.key_id, b), grpc.StatusCode.INVALID_ARGUMENT
        )
    _refused(
        lambda: admin.issue_certificate(ed.key_id, GUN, validity_days=10**6),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _refused(lambda: admin.issue_certificate("no-such-key", GUN), grpc.StatusCode.NOT_FOUND)
    failed = audit_rows(served.state, "operation = 'certify' AND outcome != 'allowed'")
    assert len(failed) >= 7
