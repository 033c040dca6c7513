"""The principal comes from the verified client certificate: URI SAN, then DNS SAN, then CN."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from authz_helpers import audit_rows

from harness import Daemon
from signer.devpki import issue, make_ca
from signer.errors import Unauthenticated
from signer.identity import principal_from_pem


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

    _, (ca_cert, ca_key) = ca  # type: ignore[misc]
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
