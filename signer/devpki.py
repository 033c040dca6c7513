"""A development PKI: a CA, a server certificate and named client certificates.

For development and tests only: the CA key is written to disk unencrypted. Client names
become the certificate's identity: ``spiffe://...`` names go into a URI SAN, names with
a dot into a DNS SAN, anything else into the CN only.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Created 0600 by the open itself: no moment where the key is readable by others
    (a chmod after writing leaves one), and never written into someone else's file."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.unlink(missing_ok=True)  # a left-over key: replace the file, not its contents
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def file_stem(name: str) -> str:
    """A safe file name for a client identity (``spiffe://x/y`` -> ``spiffe-x-y``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("://", "-")).strip("-")


def make_ca(
    out: Path, cn: str = "signerd dev CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca-key.pem", key)
    return cert, key


def load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def issue(
    out: Path,
    stem: str,
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
) -> Path:
    """Issue a leaf certificate; writes ``<stem>.pem`` and ``<stem>-key.pem``."""
    import ipaddress

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / f"{stem}-key.pem", key)
    return out / f"{stem}.pem"


def issue_client(
    out: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> Path:
    """A client certificate whose principal is ``name``."""
    stem = "client-" + file_stem(name)
    if name.startswith("spiffe://") or "://" in name:
        return issue(out, stem, file_stem(name), ca, uris=(name,))
    if "." in name:
        return issue(out, stem, name, ca, dns=(name,))
    return issue(out, stem, name, ca)


def make_dev_pki(
    out: Path,
    clients: list[str],
    server_names: tuple[str, ...] = ("localhost",),
    server_ips: tuple[str, ...] = ("127.0.0.1", "::1"),
    reissue_server: bool = False,
) -> list[str]:
    """Create (or extend) a dev PKI in ``out``: an existing CA is reused.

    Returns what was done, one line each, so the CLI never changes (or skips) a file
    silently. ``reissue_server``: names were asked for explicitly; a server certificate
    that does not carry exactly them is issued again (same CA, so clients keep working).
    """
    done: list[str] = []
    if (out / "ca.pem").exists():
        ca = load_ca(out)
        done.append(f"kept the CA in {out / 'ca.pem'}")
    else:
        ca = make_ca(out)
        done.append(f"created a CA: {out / 'ca.pem'}")
    server = out / "server.pem"
    if not server.exists():
        issue(out, "server", server_names[0], ca, server=True, dns=server_names, ips=server_ips)
        done.append(f"issued server.pem for {', '.join(server_names)}")
    else:
        have = _dns_names(server)
        if reissue_server and sorted(have) != sorted(server_names):
            issue(out, "server", server_names[0], ca, server=True, dns=server_names, ips=server_ips)
            done.append(
                f"issued server.pem again for {', '.join(server_names)} "
                f"(it was for {', '.join(have) or 'no DNS name'}); restart the daemon"
            )
        else:
            done.append(f"kept server.pem (for {', '.join(have) or 'no DNS name'})")
    for name in clients:
        if not (out / f"client-{file_stem(name)}.pem").exists():
            issue_client(out, name, ca)
            done.append(f"issued client-{file_stem(name)}.pem for {name}")
        else:
            done.append(f"kept client-{file_stem(name)}.pem")
    return done


def _dns_names(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))
