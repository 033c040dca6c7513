"""Who is calling: the principal, taken from the verified client certificate.

The only module that reads the client certificate. gRPC has already verified the chain
against the configured CA before a handler runs; here we only name the caller:
URI SAN first (SPIFFE IDs), then DNS SAN, then the subject CN.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from signer.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    name: str  # e.g. "spiffe://example.org/build-farm", "ci.example.org", "alice"
    source: str  # "uri", "dns" or "cn"
    fingerprint: str  # sha256 of the certificate (DER), hex

    def __str__(self) -> str:
        return self.name


def principal_from_context(context: grpc.ServicerContext) -> Principal:
    """The caller of this RPC; UNAUTHENTICATED if the channel carries no client certificate."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        raise Unauthenticated("a client certificate is required")
    return principal_from_pem(bytes(pems[0]))


@lru_cache(maxsize=1024)
def principal_from_pem(pem: bytes) -> Principal:
    cert = x509.load_pem_x509_certificate(pem)
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return Principal(uris[0], "uri", fingerprint)
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return Principal(dns[0], "dns", fingerprint)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return Principal(str(cns[0].value), "cn", fingerprint)
    raise Unauthenticated("the client certificate names no URI SAN, DNS SAN or CN")
