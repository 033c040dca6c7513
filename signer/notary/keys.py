"""Notary's view of a key: its algorithm names, public key bytes, key ID and signatures.

Pure functions, no token and no IO. What notary expects (``tuf/data/keys.go``):

* algorithm ``"ecdsa"`` (P-256): the public key is the DER SubjectPublicKeyInfo;
  algorithm ``"ed25519"``: the raw 32-byte public key.
* key ID: hex sha256 over notary's canonical JSON (Go, ``docker/go/canonical``) of
  ``{"keytype": ALG, "keyval": {"private": null, "public": base64(PUBLIC)}}``: keys
  sorted, no whitespace, byte strings as standard base64.
* signatures: ECDSA as raw ``r || s`` (32 bytes each, zero-padded) over SHA-256 of the
  content, reported as signature algorithm ``"ecdsa"``; ed25519 as the raw 64 bytes over
  the content itself, reported as ``"eddsa"``.

The token's ECDSA output (PKCS#11 ``CKM_ECDSA``) is already ``r || s``: nothing to convert.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from signer.errors import InvalidArgument


@dataclass(frozen=True)
class NotaryAlgorithm:
    """A notary key algorithm and the signerd algorithm that implements it."""

    name: str  # notary's key algorithm ("ecdsa", "ed25519")
    signature: str  # notary's signature algorithm ("ecdsa", "eddsa")
    signer_algorithm: str  # signer.algorithms name


ECDSA = NotaryAlgorithm("ecdsa", "ecdsa", "ecdsa-sha2-nistp256")
ED25519 = NotaryAlgorithm("ed25519", "eddsa", "ed25519")

ALGORITHMS = {a.name: a for a in (ECDSA, ED25519)}
BY_SIGNER_ALGORITHM = {a.signer_algorithm: a for a in (ECDSA, ED25519)}


def notary_algorithm(name: str) -> NotaryAlgorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise InvalidArgument(
            f"algorithm {name!r} not supported for create key; supported: {known}"
        ) from None


def public_bytes(public_key: PublicKeyTypes) -> bytes:
    """The public key bytes notary stores and sends for this key."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise InvalidArgument(f"no notary encoding for {type(public_key).__name__}")


def canonical_key_json(algorithm: str, public: bytes) -> bytes:
    """Notary's canonical JSON of a public key: the bytes its key ID hashes."""
    key = {
        "keytype": algorithm,
        "keyval": {"private": None, "public": base64.b64encode(public).decode("ascii")},
    }
    return json.dumps(key, sort_keys=True, separators=(",", ":")).encode()


def key_id(algorithm: str, public: bytes) -> str:
    """Notary's key ID (``TUFKey.ID()``)."""
    return hashlib.sha256(canonical_key_json(algorithm, public)).hexdigest()


def public_key_from_pem(pem: str) -> PublicKeyTypes:
    return serialization.load_pem_public_key(pem.encode())


def verify(algorithm: str, public: bytes, signature: bytes, content: bytes) -> bool:
    """Check a signature the way notary does (used by tests and the benchmark)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    try:
        if algorithm == ED25519.name:
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, content)
            return True
        key = serialization.load_der_public_key(public)
        if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        key.verify(encode_dss_signature(r, s), content, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False
