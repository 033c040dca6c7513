"""Self-signed X.509 certificates for keys in the token: notary's root certificates.

notary pins a repository's root keys as certificates (key type ``ecdsa-x509``) whose
common name is the GUN. Its template (``tuf/utils/x509.go`` ``NewCertificate``, signed by
``cryptoservice.GenerateCertificate`` with template = parent, i.e. self-signed):

* a random serial below 2**128; subject = issuer = ``CN=<GUN>`` and nothing else;
* validity from now (notary's default: ten years);
* KeyUsage digitalSignature + keyEncipherment (critical, as Go writes it), ExtKeyUsage
  codeSigning, BasicConstraints CA:FALSE (critical); no key identifiers (Go adds a subject
  key ID only to CA certificates);
* signed ecdsa-with-SHA256 (P-256) or ecdsa-with-SHA384 (P-384).

The private key never leaves the token, so the TBSCertificate is drafted with
``cryptography`` around the token key's public key (the draft signed by a throwaway key
of the same curve: the signature algorithm, hence the TBS, is the same for every key of
a curve), the token signs the TBS bytes, and the certificate is assembled from the TBS,
its algorithm identifier and the token's signature. It is verified before it is kept.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from signer import names
from signer.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ServiceError
from signer.identity import Principal
from signer.notary import keys as nkeys
from signer.pipeline.admin import Administration
from signer.pipeline.admission import check_usable, resource_of
from signer.policy import Operation, Resource
from signer.registry import KeyRecord, KeyRegistry
from signer.token import Token

DEFAULT_VALIDITY_DAYS = 3650  # notary: root certificates for ten years
MAX_VALIDITY_DAYS = 36500
X509_KEYTYPE = "ecdsa-x509"
_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}


@dataclass(frozen=True)
class IssuedCertificate:
    key: KeyRecord
    pem: str
    certificate_key_id: str  # notary key ID of the ecdsa-x509 key holding the PEM
    not_before: dt.datetime
    not_after: dt.datetime


def certificate_key_id(pem: str) -> str:
    """notary's ID of the ``ecdsa-x509`` key whose public value is this PEM."""
    return nkeys.key_id(X509_KEYTYPE, pem.encode("ascii")) if pem else ""


def draft(record: KeyRecord, common_name: str, days: int, now: dt.datetime) -> x509.Certificate:
    """The certificate as notary's template makes it, signed by a throwaway key."""
    public = serialization.load_pem_public_key(record.public_key_pem.encode())
    curve = record.algorithm.curve
    if not isinstance(public, ec.EllipticCurvePublicKey) or curve not in _HASHES:
        raise FailedPrecondition(
            f"key {record.key_id} is {record.algorithm.name}: notary root certificates hold "
            "ECDSA keys (ecdsa-sha2-nistp256, ecdsa-sha2-nistp384)"
        )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    throwaway = ec.generate_private_key(public.curve)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(throwaway, _HASHES[curve]())


def assemble(draft_der: bytes, tbs: bytes, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }."""
    body_start = _header_length(draft_der, 0)
    tbs_end = body_start + _element_length(draft_der, body_start)
    if draft_der[body_start:tbs_end] != tbs:
        raise ServiceError("certificate draft: the TBS is not where it belongs")
    algorithm = draft_der[tbs_end : tbs_end + _element_length(draft_der, tbs_end)]
    bit_string = b"\x03" + _length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bit_string
    return b"\x30" + _length(len(body)) + body


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _header_length(der: bytes, at: int) -> int:
    """Offset of the contents of the DER element at ``at``."""
    first = der[at + 1]
    return at + 2 + (first & 0x7F if first & 0x80 else 0)


def _element_length(der: bytes, at: int) -> int:
    """Length of the whole DER element (header and contents) at ``at``."""
    first = der[at + 1]
    if first & 0x80:
        count = first & 0x7F
        size = int.from_bytes(der[at + 2 : at + 2 + count], "big")
        return 2 + count + size
    return 2 + first


class CertificateIssuer:
    """IssueCertificate: authorised (``certify``), signed in the token, audited, kept."""

    def __init__(self, token: Token, registry: KeyRegistry, admin: Administration) -> None:
        self.token = token
        self.registry = registry
        self.admin = admin

    def issue(
        self, principal: Principal, key_id: str, common_name: str, validity_days: int = 0
    ) -> IssuedCertificate:
        with self.admin.action(
            principal, Operation.CERTIFY, Resource(key_id[:256]), rate_limited=True
        ) as action:
            if not key_id:
                raise InvalidArgument("key_id is required")
            if not common_name:
                raise InvalidArgument("common_name is required: the GUN the certificate is for")
            names.check_repository(common_name)
            days = validity_days or DEFAULT_VALIDITY_DAYS
            if not 1 <= days <= MAX_VALIDITY_DAYS:
                raise InvalidArgument(f"validity_days must be 1-{MAX_VALIDITY_DAYS}, not {days}")
            record = self.registry.get(key_id)
            action.authorize(Operation.CERTIFY, resource_of(record))
            check_usable(record)
            if record.repository and common_name != record.repository:
                raise PermissionDenied(
                    f"key {key_id} is bound to repository {record.repository!r}: its "
                    f"certificate names that GUN, not {common_name!r}"
                )
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            pem = self._sign(record, draft(record, common_name, days, now))
            cert_id = certificate_key_id(pem)
            # Fail closed: the certificate is kept and returned only once audited.
            action.allow(f"certificate CN={common_name} key {cert_id}, {days} days")
            record = self.registry.set_certificate(key_id, pem)
            return IssuedCertificate(record, pem, cert_id, now, now + dt.timedelta(days=days))

    def _sign(self, record: KeyRecord, certificate: x509.Certificate) -> str:
        """Re-sign the draft's TBS in the token; the assembled certificate is verified."""
        tbs = certificate.tbs_certificate_bytes
        alg = record.algorithm
        raw = self.token.sign(record.object_id, alg, alg.to_be_signed(tbs))
        der = assemble(
            certificate.public_bytes(serialization.Encoding.DER), tbs, alg.encode_signature(raw)
        )
        issued = x509.load_der_x509_certificate(der)
        try:
            issued.verify_directly_issued_by(issued)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise ServiceError(
                f"the certificate the token signed for key {record.key_id} does not verify"
            ) from exc
        if issued.public_key() != serialization.load_pem_public_key(record.public_key_pem.encode()):
            raise ServiceError(f"the certificate for key {record.key_id} holds another key")
        return issued.public_bytes(serialization.Encoding.PEM).decode("ascii")
