"""Who is calling: the principal, taken from the verified client certificate.

The only module that reads the client certificate. gRPC has already verified the chain
against the configured CA before a handler runs; here we name the caller (URI SAN first
(SPIFFE IDs), then DNS SAN, then the subject CN) and refuse certificates that verify but
must still not be an identity: CA certificates, weak keys, SHA-1/MD5 signatures, blank
names, and certificates revoked by the configured CRL (``[tls] crl``).

What a certificate yields is cached by its PEM (parsing is the expensive part); the
revocation check is a set lookup done on every call, so a CRL reloaded on SIGHUP
applies to the very next request, also on connections already open. A worker restarted
while the CRL file is broken enforces the last good CRL its supervisor kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from signer.errors import ConfigError, Unauthenticated
from signer.principal import Principal  # defined apart (light), used from here too

if TYPE_CHECKING:
    import grpc

    from signer.config import TlsConfig

log = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256  # P-256
WEAK_HASHES = (hashes.SHA1, hashes.MD5)
_ISSUER_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)


@dataclass(frozen=True)
class Revocations:
    """Serial numbers revoked by the configured CA(s), per issuer name."""

    source: str  # the CRL file, for messages; "" when no CRL is configured
    revoked: frozenset[tuple[x509.Name, int]]

    def is_revoked(self, issuer: x509.Name, serial: int) -> bool:
        return (issuer, serial) in self.revoked


NO_REVOCATIONS = Revocations("", frozenset())
_revocations = NO_REVOCATIONS  # per process; swapped in one assignment (see reload)


@dataclass(frozen=True)
class _Checked:
    """What a certificate yields, before the per-call revocation check."""

    principal: Principal
    issuer: x509.Name
    serial: int


def principal_from_context(context: grpc.ServicerContext) -> Principal:
    """The caller of this RPC; UNAUTHENTICATED if the channel carries no usable certificate."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        raise Unauthenticated("a client certificate is required")
    return principal_from_pem(bytes(pems[0]))


def principal_from_pem(pem: bytes) -> Principal:
    """The principal of a (chain-verified) client certificate, or Unauthenticated why not."""
    checked = _check(pem)
    if isinstance(checked, str):
        raise Unauthenticated(checked)
    revocations = _revocations  # read once: a reload swaps the whole object
    if revocations.is_revoked(checked.issuer, checked.serial):
        raise Unauthenticated(
            f"the client certificate (serial {checked.serial:x}) is revoked by the CRL "
            f"{Path(revocations.source).name}"
        )
    return checked.principal


@lru_cache(maxsize=1024)
def _check(pem: bytes) -> _Checked | str:
    """Parse and vet a certificate once; a string is the reason it is refused."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "the client certificate cannot be parsed"
    problem = _certificate_problem(cert)
    if problem:
        return f"the client certificate is refused: {problem}"
    named = _name_of(cert)
    if isinstance(named, str):
        return named
    name, source = named
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return _Checked(Principal(name, source, fingerprint), cert.issuer, cert.serial_number)


def _certificate_problem(cert: x509.Certificate) -> str | None:
    """Why a certificate that chains to the CA is still no client identity, if it is not."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError:
        return "its extensions cannot be parsed"
    if constraints is not None and constraints.ca:
        return "it is a CA certificate (basicConstraints CA:TRUE), never a client identity"
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"it is signed with an unsupported algorithm ({cert.signature_algorithm_oid})"
    if isinstance(digest, WEAK_HASHES):
        return f"it is signed with {digest.name.upper()}; SHA-256 or better is required"
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "its public key type is not supported"
    return _key_problem(key)


def _key_problem(key: object) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"its key is RSA-{key.key_size}; at least RSA-{MIN_RSA_BITS} is required"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_BITS:
            return f"its key is on the {key.curve.name} curve; at least P-256 is required"
        return None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return None
    return "its key type is not accepted (RSA-2048 or larger, EC P-256 or larger, Ed25519, Ed448)"


def _name_of(cert: x509.Certificate) -> tuple[str, str] | str:
    """(name, source) by precedence; a string is the reason there is no usable name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError:
        return "the client certificate's subjectAltName cannot be parsed"
    if san is not None:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return _usable(uris[0], "uri")
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return _usable(dns[0], "dns")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return _usable(value if isinstance(value, str) else value.decode("utf-8", "replace"), "cn")
    return "the client certificate names no URI SAN, DNS SAN or CN"


def _usable(name: str, source: str) -> tuple[str, str] | str:
    """A blank name (or one padded with spaces or control characters) is nobody's name:
    it would show in the audit log as something it is not."""
    what = {"uri": "URI SAN", "dns": "DNS SAN", "cn": "CN"}[source]
    if not name.strip():
        return f"the client certificate's {what} is empty or blank: no principal"
    if name != name.strip() or not name.isprintable():
        return (
            f"the client certificate's {what} {name!r} has surrounding whitespace or "
            "unprintable characters: no principal"
        )
    return name, source


# -- revocation ---------------------------------------------------------------------


def load_revocations(crl: Path, ca: Path) -> Revocations:
    """Read a CRL file (PEM, possibly several CRLs, or DER) and check each is signed by a
    CA in ``ca``; ConfigError naming the file otherwise."""
    try:
        data = crl.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CRL {crl}: {exc}") from exc
    return parse_revocations(data, crl, ca)


def parse_revocations(data: bytes, crl: Path, ca: Path) -> Revocations:
    """``load_revocations`` for bytes read already (``crl`` names them in messages)."""
    try:
        authorities = x509.load_pem_x509_certificates(ca.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the CA certificates {ca}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"cannot read the CA certificates {ca}: {exc}") from exc
    try:
        lists = _parse_crls(data)
    except ValueError as exc:
        raise ConfigError(f"the CRL {crl} cannot be parsed (PEM or DER): {exc}") from exc
    if not lists:
        raise ConfigError(f"the CRL file {crl} holds no CRL")
    revoked: set[tuple[x509.Name, int]] = set()
    now = dt.datetime.now(dt.UTC)
    for one in lists:
        if not any(_signed_by(one, authority) for authority in authorities):
            raise ConfigError(
                f"the CRL {crl} (issuer {one.issuer.rfc4514_string()}) is not signed by "
                f"a CA in {ca}"
            )
        if one.next_update_utc is not None and one.next_update_utc < now:
            log.warning("the CRL %s is past its next update (%s)", crl, one.next_update_utc)
        revoked.update((one.issuer, entry.serial_number) for entry in one)
    return Revocations(str(crl), frozenset(revoked))


def _parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    if marker not in data:
        return [x509.load_der_x509_crl(data)]
    end = b"-----END X509 CRL-----"
    blocks = []
    for part in data.split(marker)[1:]:
        body, sep, _ = part.partition(end)
        if not sep:
            raise ValueError("a PEM CRL block has no END line")
        blocks.append(x509.load_pem_x509_crl(marker + body + end + b"\n"))
    return blocks


def _signed_by(crl: x509.CertificateRevocationList, authority: x509.Certificate) -> bool:
    if crl.issuer != authority.subject:
        return False
    key = authority.public_key()
    if not isinstance(key, _ISSUER_KEYS):
        return False
    try:
        return crl.is_signature_valid(key)
    except (InvalidSignature, UnsupportedAlgorithm, TypeError):
        return False


def configure(tls: TlsConfig, fallback: Path | None = None) -> None:
    """At start-up: use the configured CRL, if any (ConfigError if it cannot be used).

    A worker (re)started while the file is broken enforces ``fallback``, the last good
    CRL the supervisor kept (``signer.supervisor.keep_good_crl``), so it refuses what its
    siblings refuse; without one (a single worker, or the first start) the error stands."""
    global _revocations
    crl = tls.crl
    if crl is None:
        _revocations = NO_REVOCATIONS
        return
    try:
        _revocations = load_revocations(crl, tls.ca)
    except ConfigError as exc:
        kept = fallback
        if kept is None or not kept.exists():
            raise
        log.error("%s; enforcing the last good CRL (%s) until it is fixed", exc, kept)
        # Refusals still name the configured file: the copy is its last good version.
        _revocations = Revocations(str(crl), load_revocations(kept, tls.ca).revoked)


def reload(tls: TlsConfig) -> None:
    """On SIGHUP: re-read the CRL; one that cannot be used leaves the current one in force."""
    global _revocations
    crl = tls.crl
    if crl is None:
        return
    try:
        revocations = load_revocations(crl, tls.ca)
    except ConfigError as exc:
        log.error("CRL reload failed, keeping the current CRL: %s", exc)
        return
    _revocations = revocations
    log.info("CRL reloaded: %d revoked certificate(s)", len(revocations.revoked))


def check_crl(argv: list[str] | None = None) -> int:
    """``python -m signer.identity CRL CA``: may the CRL whose bytes come on stdin be used?
    0 if so, else EXIT_CONFIG with the reason on stderr. The supervisor asks this of a child
    interpreter, as it imports no cryptography itself (signer/supervisor.py)."""
    import argparse
    import sys

    from signer.process import EXIT_CONFIG

    parser = argparse.ArgumentParser(
        prog="python -m signer.identity", description="check a CRL (its bytes on stdin)"
    )
    parser.add_argument("crl", type=Path, help="the CRL file (named in messages)")
    parser.add_argument("ca", type=Path, help="the CA certificates it must be signed by")
    args = parser.parse_args(argv)
    try:
        parse_revocations(sys.stdin.buffer.read(), args.crl, args.ca)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    raise SystemExit(check_crl())
