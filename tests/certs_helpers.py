"""Client certificates and CRLs for the identity tests, signed by a daemon's dev CA.

``signerd dev-pki`` makes only good certificates; the identity tests need bad ones too
(CA:TRUE, RSA-1024, SHA-1, blank names) and CRLs. They are built here with
``cryptography``, or with the ``openssl`` CLI where ``cryptography`` refuses to sign
(SHA-1). Everything is real: the daemon sees them over real mTLS.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from signer.devpki import load_ca
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    serial: int


def make_client_cert(
    pki: Path,
    stem: str,
    cn: str | None,
    *,
    dns: Sequence[str] = (),
    uris: Sequence[str] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
    ca: bool = False,
) -> ClientCert:
    """A client certificate signed by the dev CA in ``pki`` (SHA-256)."""
    ca_cert, ca_key = load_ca(pki)
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    attributes = []
    if cn is not None:
        with warnings.catch_warnings():  # cryptography warns about an empty CN: a test needs one
            warnings.simplefilter("ignore", UserWarning)
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False))
    subject = x509.Name(attributes)
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write(pki, stem, cert.public_bytes(serialization.Encoding.PEM), key, serial)


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def make_sha1_client_cert(pki: Path, stem: str, cn: str) -> ClientCert:
    """A client certificate signed with ECDSA-SHA1 (``cryptography`` refuses: openssl)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = pki / f"{stem}-key.pem"
    _write_key(key_path, key)
    ext = pki / f"{stem}.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    csr = subprocess.run(
        ["openssl", "req", "-new", "-key", str(key_path), "-subj", f"/CN={cn}"],
        check=True,
        capture_output=True,
    ).stdout
    serial = x509.random_serial_number()
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-sha1",
            "-days",
            "30",
            "-CA",
            str(pki / "ca.pem"),
            "-CAkey",
            str(pki / "ca-key.pem"),
            "-set_serial",
            str(serial),
            "-extfile",
            str(ext),
            "-out",
            str(pki / f"{stem}.pem"),
        ],
        input=csr,
        check=True,
        capture_output=True,
    )
    return ClientCert(pki / f"{stem}.pem", key_path, serial)


def write_crl(
    path: Path,
    pki: Path,
    serials: Sequence[int],
    *,
    der: bool = False,
    signer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
) -> Path:
    """A CRL revoking ``serials``, signed by the dev CA in ``pki`` (or ``signer``)."""
    issuer_cert, issuer_key = signer or load_ca(pki)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=7))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(
        crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)
    )
    return path


def serial_of(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def channel(address: str, pki: Path, client: ClientCert) -> grpc.Channel:
    """An mTLS channel presenting ``client``, trusting the daemon's CA."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    return grpc.secure_channel(address, creds)


def list_keys(address: str, pki: Path, client: ClientCert) -> pb.ListKeysResponse:
    """One ListKeys call as ``client`` (raises grpc.RpcError when refused)."""
    with channel(address, pki, client) as ch:
        return pb_grpc.KeyServiceStub(ch).ListKeys(pb.ListKeysRequest(), timeout=10)


def refusal(address: str, pki: Path, client: ClientCert) -> grpc.RpcError:
    """The error a ListKeys call as ``client`` ends with; fails if it succeeds."""
    try:
        list_keys(address, pki, client)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{client.cert.name} was served")


def _write(
    pki: Path, stem: str, pem: bytes, key: CertificateIssuerPrivateKeyTypes, serial: int
) -> ClientCert:
    (pki / f"{stem}.pem").write_bytes(pem)
    _write_key(pki / f"{stem}-key.pem", key)
    return ClientCert(pki / f"{stem}.pem", pki / f"{stem}-key.pem", serial)


def _write_key(path: Path, key: CertificateIssuerPrivateKeyTypes) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
