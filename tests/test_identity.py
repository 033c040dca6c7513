"""The principal comes from the verified client certificate: URI SAN, then DNS SAN, then CN."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_helpers import audit_rows
from certs_helpers import make_client_cert, make_sha1_client_cert, rsa_key, write_crl
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

from harness import Daemon
from signer import identity
from signer.config import TlsConfig
from signer.devpki import issue, load_ca, make_ca
from signer.errors import ConfigError, PermissionDenied, Unauthenticated
from signer.identity import Principal, principal_from_pem
from signer.policy import Operation, Resource
from signer.policy.file import FilePolicy


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("pki")
    return out, make_ca(out)


def _principal(ca: tuple[Path, object], stem: str, cn: str, **names: tuple[str, ...]) -> object:
    out, authority = ca
    pem = issue(out, stem, cn, authority, **names).read_bytes()  # type: ignore[arg-type]
    return principal_from_pem(pem)


def test_uri_san_wins_over_dns_and_cn(ca: tuple[Path, object]) -> None:
    p = _principal(
        ca, "both", "some-cn", uris=("spiffe://example.org/release-bot",), dns=("ci.example.org",)
    )
    assert (p.name, p.source) == ("spiffe://example.org/release-bot", "uri")  # type: ignore[attr-defined]


def test_dns_san_wins_over_cn(ca: tuple[Path, object]) -> None:
    p = _principal(ca, "dns", "some-cn", dns=("ci.example.org", "other.example.org"))
    assert (p.name, p.source) == ("ci.example.org", "dns")  # type: ignore[attr-defined]


def test_cn_when_no_san(ca: tuple[Path, object]) -> None:
    p = _principal(ca, "cn", "alice")
    assert (p.name, p.source) == ("alice", "cn")  # type: ignore[attr-defined]
    assert len(p.fingerprint) == 64  # type: ignore[attr-defined]


def test_ip_san_only_falls_back_to_cn(ca: tuple[Path, object]) -> None:
    p = _principal(ca, "ip", "host-by-ip", ips=("127.0.0.1",))
    assert (p.name, p.source) == ("host-by-ip", "cn")  # type: ignore[attr-defined]


def test_no_name_at_all_is_unauthenticated(ca: tuple[Path, object]) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_cert, ca_key = load_ca(ca[0])
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    with pytest.raises(Unauthenticated, match="names no URI SAN, DNS SAN or CN"):
        principal_from_pem(cert.public_bytes(serialization.Encoding.PEM))


def test_daemon_names_each_kind_of_caller(daemon: Daemon) -> None:
    """Over real mTLS: the audit log records the principal each certificate yields."""
    names = ["spiffe://example.org/build-farm", "ci.example.org", "carol"]
    for name in names:
        with daemon.client(name) as client:
            client.list_keys()
            with pytest.raises(Exception) as info:
                client.get_key("no-such-key")
            assert info.value.code == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    rows = audit_rows(daemon.state, "operation = 'read' AND key_id = 'no-such-key'")
    assert [r["principal"] for r in rows][-3:] == names


# -- certificates that chain to the CA and still are no identity ---------------------------


def _refusal(pem: bytes) -> str:
    with pytest.raises(Unauthenticated) as info:
        principal_from_pem(pem)
    return info.value.message


def test_ca_certificates_are_never_an_identity(ca: tuple[Path, object]) -> None:
    out, _ = ca
    assert "CA certificate (basicConstraints CA:TRUE)" in _refusal((out / "ca.pem").read_bytes())
    leaf = make_client_cert(out, "ca-true", "alice", ca=True)
    assert "CA:TRUE" in _refusal(leaf.cert.read_bytes())
    assert principal_from_pem(make_client_cert(out, "ca-false", "alice").cert.read_bytes())


@pytest.mark.parametrize(
    ("key", "complaint"),
    [
        (lambda: rsa_key(1024), "RSA-1024; at least RSA-2048"),
        (lambda: rsa_key(2047), "RSA-2047"),
        (lambda: ec.generate_private_key(ec.SECP224R1()), "secp224r1 curve; at least P-256"),
        (lambda: dsa.generate_private_key(2048), "key type is not accepted"),
        (lambda: rsa_key(2048), None),
        (lambda: ec.generate_private_key(ec.SECP256R1()), None),
        (lambda: ec.generate_private_key(ec.SECP384R1()), None),
        (ed25519.Ed25519PrivateKey.generate, None),
    ],
)
def test_client_key_strength(ca: tuple[Path, object], key: Any, complaint: str | None) -> None:
    out, _ = ca
    pem = make_client_cert(out, "strength", "alice", key=key()).cert.read_bytes()
    if complaint is None:
        assert principal_from_pem(pem).name == "alice"
    else:
        assert complaint in _refusal(pem)


def test_sha1_signed_certificate_is_refused(ca: tuple[Path, object]) -> None:
    out, _ = ca
    pem = make_sha1_client_cert(out, "sha1", "alice").cert.read_bytes()
    assert x509.load_pem_x509_certificate(pem).signature_hash_algorithm.name == "sha1"  # type: ignore[union-attr]
    assert "signed with SHA1; SHA-256 or better" in _refusal(pem)


@pytest.mark.parametrize(
    ("cn", "names", "complaint"),
    [
        ("", {}, "CN is empty or blank"),
        ("  \t", {}, "CN is empty or blank"),
        (" alice", {}, "surrounding whitespace"),
        ("alice\n", {}, "surrounding whitespace"),
        ("ali\x00ce", {}, "unprintable"),
        ("ali\u00a0ce", {}, "unprintable"),  # a no-break space looks like a space
        ("alice", {"uris": [" "]}, "URI SAN is empty or blank"),  # no fallback to DNS or CN
        ("alice", {"dns": [""]}, "DNS SAN is empty or blank"),
    ],
)
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
def test_blank_or_padded_names_are_refused(
    ca: tuple[Path, object], cn: str, names: dict[str, list[str]], complaint: str
) -> None:
    out, _ = ca
    pem = make_client_cert(out, "blank", cn, **names).cert.read_bytes()  # type: ignore[arg-type]
    assert complaint in _refusal(pem)


def test_refusals_are_cached_too(ca: tuple[Path, object]) -> None:
    out, _ = ca
    pem = make_client_cert(out, "cached", "alice", key=rsa_key(1024)).cert.read_bytes()
    for _ in range(3):  # the same answer every time, from the cache after the first
        assert "RSA-1024" in _refusal(pem)


# -- revocation ------------------------------------------------------------------------------


def _config(out: Path, crl: Path | None) -> TlsConfig:
    return TlsConfig(
        ca=out / "ca.pem", cert=out / "server.pem", key=out / "server-key.pem", crl=crl
    )


@pytest.fixture
def revocation(ca: tuple[Path, object]) -> Iterator[Path]:
    """Leave the process without a CRL afterwards, whatever the test configured."""
    out, _ = ca
    try:
        yield out
    finally:
        identity.configure(_config(out, None))


@pytest.mark.parametrize("der", [False, True])
def test_crl_revokes_on_the_next_call(revocation: Path, der: bool) -> None:
    out = revocation
    dave, erin = (make_client_cert(out, n, n) for n in ("dave", "erin"))
    crl = write_crl(out / "crl.any", out, [], der=der)
    identity.configure(_config(out, crl))
    assert principal_from_pem(dave.cert.read_bytes()).name == "dave"  # cached from now on

    write_crl(crl, out, [dave.serial], der=der)
    identity.reload(_config(out, crl))
    message = _refusal(dave.cert.read_bytes())
    assert f"serial {dave.serial:x}) is revoked by the CRL crl.any" in message
    assert principal_from_pem(erin.cert.read_bytes()).name == "erin"


def test_crl_serials_count_only_for_their_issuer(revocation: Path, tmp_path: Path) -> None:
    """A serial revoked by another CA's CRL does not revoke our certificate of that serial."""
    out = revocation
    dave = make_client_cert(out, "dave", "dave")
    other = make_ca(tmp_path, "other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((out / "ca.pem").read_bytes() + (tmp_path / "ca.pem").read_bytes())
    crl = tmp_path / "two.pem"
    write_crl(tmp_path / "ours.pem", out, [])
    write_crl(tmp_path / "theirs.pem", out, [dave.serial], signer=other)
    crl.write_bytes((tmp_path / "ours.pem").read_bytes() + (tmp_path / "theirs.pem").read_bytes())
    config = dataclasses.replace(_config(out, crl), ca=bundle)
    identity.configure(config)
    assert principal_from_pem(dave.cert.read_bytes()).name == "dave"


def test_unusable_crl_is_a_config_error_at_start(revocation: Path, tmp_path: Path) -> None:
    out = revocation
    rogue = make_ca(tmp_path / "rogue", "rogue CA")
    cases = {
        "garbage.pem": b"not a CRL at all",
        "broken.pem": b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        "empty.pem": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match="cannot be parsed"):
            identity.configure(_config(out, tmp_path / name))
    write_crl(tmp_path / "rogue.pem", out, [], signer=rogue)
    with pytest.raises(ConfigError, match="is not signed by a CA in"):
        identity.configure(_config(out, tmp_path / "rogue.pem"))
    # Same issuer name, another key: the signature is what counts.
    forged = make_ca(tmp_path / "forged", "signerd dev CA")
    write_crl(tmp_path / "forged.pem", out, [], signer=forged)
    with pytest.raises(ConfigError, match="is not signed by a CA in"):
        identity.configure(_config(out, tmp_path / "forged.pem"))
    with pytest.raises(ConfigError, match="cannot read the CRL"):
        identity.configure(_config(out, tmp_path / "missing.pem"))


def test_unusable_crl_at_reload_keeps_the_old_one(
    revocation: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = revocation
    dave = make_client_cert(out, "dave", "dave")
    crl = write_crl(out / "crl.pem", out, [dave.serial])
    identity.configure(_config(out, crl))
    crl.write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR, logger="signer.identity"):
        identity.reload(_config(out, crl))
    assert "CRL reload failed, keeping the current CRL" in caplog.text
    assert "revoked" in _refusal(dave.cert.read_bytes())


def test_a_broken_crl_at_start_falls_back_to_the_kept_one(
    revocation: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started while the CRL file is broken enforces the supervisor's last good
    copy; a reload never does (it keeps what is in force), nor a start without a copy."""
    out = revocation
    dave, erin = (make_client_cert(out, n, n) for n in ("dave", "erin"))
    kept = write_crl(tmp_path / "crl.last-good", out, [dave.serial])
    crl = tmp_path / "crl.pem"
    crl.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        identity.configure(_config(out, crl))  # no copy: the error stands
    with pytest.raises(ConfigError, match="cannot be parsed"):
        identity.configure(_config(out, crl), tmp_path / "missing")  # not there: likewise
    with caplog.at_level(logging.ERROR, logger="signer.identity"):
        identity.configure(_config(out, crl), kept)
    assert "enforcing the last good CRL" in caplog.text and "cannot be parsed" in caplog.text
    assert f"serial {dave.serial:x}) is revoked by the CRL crl.pem" in _refusal(
        dave.cert.read_bytes()
    )
    assert principal_from_pem(erin.cert.read_bytes()).name == "erin"
    write_crl(kept, out, [erin.serial])  # a reload reads the file, never the copy
    identity.reload(_config(out, crl))
    assert "revoked" in _refusal(dave.cert.read_bytes())
    assert principal_from_pem(erin.cert.read_bytes()).name == "erin"


def test_the_supervisor_keeps_only_a_good_crl(revocation: Path, tmp_path: Path) -> None:
    """keep_good_crl checks the CRL in a child interpreter (the supervisor imports no
    cryptography) and keeps its bytes, 0600; a bad one is a ConfigError, the copy stays."""
    from signer.config import SignerConfig, StateConfig, TokenConfig
    from signer.supervisor import LAST_GOOD_CRL, keep_good_crl

    out = revocation
    crl = write_crl(tmp_path / "crl.der", out, [12345], der=True)
    state = tmp_path / "state"
    state.mkdir()
    config = SignerConfig(tls=_config(out, crl), token=TokenConfig(), state=StateConfig(dir=state))
    kept = keep_good_crl(config)
    assert kept == state / LAST_GOOD_CRL
    assert kept.read_bytes() == crl.read_bytes() and kept.stat().st_mode & 0o777 == 0o600
    good = crl.read_bytes()
    rogue = make_ca(tmp_path / "rogue", "rogue CA")
    for bad, complaint in (
        (b"garbage", "cannot be parsed"),
        (write_crl(tmp_path / "r.pem", out, [], signer=rogue).read_bytes(), "not signed by"),
    ):
        crl.write_bytes(bad)
        with pytest.raises(ConfigError, match=complaint) as info:
            keep_good_crl(config)
        assert str(crl) in str(info.value)
        assert kept.read_bytes() == good
    crl.unlink()
    with pytest.raises(ConfigError, match="cannot read the CRL"):
        keep_good_crl(config)
    no_crl = dataclasses.replace(config, tls=_config(out, None))
    assert keep_good_crl(no_crl) is None and not kept.exists()  # no CRL: no stale copy


# -- where the name came from: uri:, dns:, cn: prefixes in the policy -----------------------

_PREFIXES = """
[groups]
ops = ["cn:carol", "dns:dave", "erin", "cn:dns:odd"]

[[rules]]
principals = ["dns:admin", "uri:spiffe://example.org/*", "cn:build-*"]
operations = ["create"]

[[rules]]
principals = ["group:ops", "alice"]
operations = ["read"]
"""


@pytest.mark.parametrize(
    ("name", "source", "operation", "allowed"),
    [
        ("admin", "dns", "create", True),
        ("admin", "cn", "create", False),  # a CN admin cannot stand in for the DNS SAN admin
        ("admin", "uri", "create", False),
        ("spiffe://example.org/x", "uri", "create", True),
        ("spiffe://example.org/x", "cn", "create", False),
        ("build-7", "cn", "create", True),
        ("build-7", "dns", "create", False),
        ("alice", "cn", "read", True),  # bare: any source
        ("alice", "dns", "read", True),
        ("carol", "cn", "read", True),
        ("carol", "dns", "read", False),
        ("dave", "dns", "read", True),
        ("dave", "cn", "read", False),
        ("erin", "uri", "read", True),
        ("dns:dave", "cn", "read", False),  # a CN that looks prefixed is only "cn:dns:dave"
        ("dns:odd", "cn", "read", True),
        ("odd", "dns", "read", False),
    ],
)
def test_source_prefixes(name: str, source: str, operation: str, allowed: bool) -> None:
    policy = FilePolicy.parse(_PREFIXES)
    principal = Principal(name, source, "0" * 64)
    if allowed:
        policy.authorize(principal, Operation(operation), Resource("k"))
    else:
        with pytest.raises(PermissionDenied):
            policy.authorize(principal, Operation(operation), Resource("k"))


@pytest.mark.parametrize(
    "text",
    [
        '[[rules]]\nprincipals = ["dns:"]\noperations = ["read"]',
        '[groups]\ng = ["cn:"]\n[[rules]]\nprincipals = ["group:g"]\noperations = ["read"]',
    ],
)
def test_prefix_without_a_name_is_a_policy_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"names a source .* but no principal"):
        FilePolicy.parse(text, "policy.toml")
