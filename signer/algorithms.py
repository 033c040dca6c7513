"""The signature algorithms we offer and how each one's output is encoded.

Pure data and pure functions: no token, no IO. The token produces raw signatures
(ECDSA as r||s, as PKCS#11 defines it); this module turns them into what
securesystemslib verifies for the TUF scheme (ECDSA as DER), and builds the TUF
key dict whose canonical-JSON hash is the key_id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import SSlibKey

from signer.errors import InvalidArgument

Family = Literal["ec", "ed25519", "rsa"]
# Asked once per signed digest: looked up, not computed (hashlib.new each time).
_DIGEST_SIZES = {name: hashlib.new(name).digest_size for name in ("sha256", "sha384", "sha512")}


@dataclass(frozen=True)
class Algorithm:
    """One signing algorithm: how the token makes the key and how TUF names it."""

    name: str  # our name, equal to the securesystemslib scheme
    keytype: str  # securesystemslib keytype
    scheme: str  # securesystemslib scheme
    family: Family
    curve: str | None = None  # named curve for EC keys
    hash_name: str | None = None  # digest signed by the token; None: pure signature
    rsa_bits: int = 0

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self.hash_name] if self.hash_name else 0

    @property
    def accepts_digest(self) -> bool:
        """Whether a pre-hashed digest can be signed (EdDSA signs the message itself)."""
        return self.hash_name is not None

    def to_be_signed(self, payload: bytes) -> bytes:
        """What the token signs for ``payload``: its digest, or the payload itself for EdDSA."""
        if self.hash_name is None:
            return payload
        return hashlib.new(self.hash_name, payload).digest()

    def check_digest(self, digest: bytes) -> bytes:
        if not self.accepts_digest:
            raise InvalidArgument(f"{self.name} signs whole messages; send payload, not digest")
        if len(digest) != self.digest_size:
            raise InvalidArgument(
                f"{self.name} expects a {self.hash_name} digest of {self.digest_size} bytes, "
                f"got {len(digest)} bytes"
            )
        return digest

    def encode_signature(self, raw: bytes) -> bytes:
        """Token output -> signature bytes as securesystemslib verifies them (after hex)."""
        if self.family == "ec":
            half = len(raw) // 2
            r = int.from_bytes(raw[:half], "big")
            s = int.from_bytes(raw[half:], "big")
            return encode_dss_signature(r, s)
        return raw


ECDSA_P256 = Algorithm(
    "ecdsa-sha2-nistp256", "ecdsa", "ecdsa-sha2-nistp256", "ec", "secp256r1", "sha256"
)
ECDSA_P384 = Algorithm(
    "ecdsa-sha2-nistp384", "ecdsa", "ecdsa-sha2-nistp384", "ec", "secp384r1", "sha384"
)
ED25519 = Algorithm("ed25519", "ed25519", "ed25519", "ed25519")
RSA_PSS_3072 = Algorithm(
    "rsassa-pss-sha256", "rsa", "rsassa-pss-sha256", "rsa", None, "sha256", rsa_bits=3072
)

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a for a in (ECDSA_P256, ECDSA_P384, ED25519, RSA_PSS_3072)
}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise InvalidArgument(f"unknown algorithm {name!r}; known: {known}") from None


def tuf_key(algorithm: Algorithm, public_key: PublicKeyTypes) -> SSlibKey:
    """The securesystemslib key for a public key; its keyid is the TUF key_id."""
    expected: type = {
        "ec": ec.EllipticCurvePublicKey,
        "ed25519": ed25519.Ed25519PublicKey,
        "rsa": rsa.RSAPublicKey,
    }[algorithm.family]
    if not isinstance(public_key, expected):
        raise ValueError(f"{algorithm.name}: unexpected public key {type(public_key).__name__}")
    return SSlibKey.from_crypto(public_key, scheme=algorithm.scheme)


def tuf_key_json(key: SSlibKey) -> str:
    """Canonical JSON of the key dict: the exact bytes the key_id hashes.

    Canonical JSON keeps the raw newlines of PEM strings: parse it with
    ``json.loads(text, strict=False)``.
    """
    return str(encode_canonical(key.to_dict()))


def public_key_pem(public_key: PublicKeyTypes) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_from_json(keyid: str, key_json: str) -> SSlibKey:
    return SSlibKey.from_dict(keyid, json.loads(key_json, strict=False))
