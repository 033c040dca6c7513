"""An old notary root key file, read once to hand a repository's root over to the token.

Migrating a repository made with the notary CLI (or ``docker trust``) means one root
rotation that the *old* root key signs: that key is a file under ``~/.notary/private``
or ``~/.docker/trust/private`` (encrypted PKCS#8 PEM with notary's ``role:``/``gun:``
headers). This module reads it, signs exactly the new root's bytes and nothing else,
and keeps it in memory only for that one signature. The new root key is created in
the token; afterwards the old file can be deleted (``notary key remove``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from signer_client.trust.metadata import PublicKey, ecdsa_key

_PEM = re.compile(
    rb"-----BEGIN (?P<kind>[A-Z ]+)-----\r?\n(?P<body>.*?)-----END (?P=kind)-----", re.S
)


class LegacyKeyError(Exception):
    """The old key file cannot be used (unreadable, wrong passphrase, not in root)."""


@dataclass(frozen=True)
class LegacyRootKey:
    """The old root key, matched to the root key it appears as in root.json."""

    notary_id: str  # the key ID root.json lists (the certificate's, for ecdsa-x509)
    _private: ec.EllipticCurvePrivateKey

    def sign(self, payload: bytes) -> bytes:
        """notary's ECDSA signature: raw ``r || s`` over SHA-256."""
        r, s = decode_dss_signature(self._private.sign(payload, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _strip_headers(data: bytes) -> bytes:
    """PEM without notary's ``role: root`` style headers, which OpenSSL does not take."""
    match = _PEM.search(data)
    if match is None:
        raise LegacyKeyError("no PEM private key in the file")
    body = match.group("body").split(b"\n")
    lines = [line for line in body if b":" not in line and line.strip()]
    kind = match.group("kind")
    return (
        b"-----BEGIN " + kind + b"-----\n" + b"\n".join(lines) + b"\n-----END " + kind + b"-----\n"
    )


def _pem_der(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().split(b"\n")[1:-1]))


def _der(data: bytes, at: int = 0) -> tuple[int, bytes, int]:
    """One DER element at ``at``: (tag, contents, offset after it)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[at : at + n], "big")
        at += n
    return tag, data[at : at + length], at + length


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(data):
        tag, body, at = _der(data, at)
        out.append((tag, body))
    return out


_PBES2 = bytes.fromhex("2a864886f70d01050d")
_PBKDF2 = bytes.fromhex("2a864886f70d01050c")
_PRF = {bytes.fromhex("2a864886f70d0207"): "sha1", bytes.fromhex("2a864886f70d0209"): "sha256"}
_AES_CBC = {bytes.fromhex("608648016503040102"): 16, bytes.fromhex("608648016503040116"): 24}
_AES_CBC[bytes.fromhex("60864801650304012a")] = 32


def _decrypt_pkcs8(der: bytes, passphrase: bytes) -> bytes:
    """EncryptedPrivateKeyInfo with PBES2 (PBKDF2 + AES-CBC), as notary writes it.

    Decrypted here because the ``cryptography`` release in use refuses the PBES2
    parameters Go's encoder writes (no explicit PRF) with "Invalid key".
    """
    (algorithm, encrypted) = _children(_der(der)[1])
    scheme, params = _children(algorithm[1])
    if scheme[1] != _PBES2:
        raise ValueError("not PBES2")
    kdf, cipher = _children(params[1])
    kdf_oid, kdf_params = _children(kdf[1])
    if kdf_oid[1] != _PBKDF2:
        raise ValueError("not PBKDF2")
    fields = _children(kdf_params[1])
    salt, iterations = fields[0][1], int.from_bytes(fields[1][1], "big")
    prf = next((_PRF.get(_children(f[1])[0][1]) for f in fields[2:] if f[0] == 0x30), "sha1")
    cipher_oid, iv = _children(cipher[1])
    key_size = _AES_CBC[cipher_oid[1]]
    key = hashlib.pbkdf2_hmac(prf or "sha1", passphrase, salt, iterations, key_size)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv[1])).decryptor()
    padded = decryptor.update(encrypted[1]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad padding (wrong passphrase)")
    plain = padded[:-pad]
    # Go writes PKCS#8 version 1 without the optional public key; OpenSSL 3 (under
    # ``cryptography``) reads only version 0 then. Same length: patch the INTEGER.
    _, body, _ = _der(plain)
    if body.startswith(b"\x02\x01\x01"):
        plain = plain[: len(plain) - len(body)] + b"\x02\x01\x00" + body[3:]
    return plain


def load_legacy_root_key(
    path: Path, passphrase: str | None, root_keys: Iterable[PublicKey]
) -> LegacyRootKey:
    """Read ``path`` and match it to one of ``root_keys`` (by canonical key ID)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LegacyKeyError(f"cannot read {path}: {exc.strerror}") from None
    pem = _strip_headers(data)
    try:
        if b"ENCRYPTED" in pem.split(b"\n", 1)[0]:
            if not passphrase:
                raise LegacyKeyError(f"{path} is encrypted: set NOTARY_ROOT_PASSPHRASE")
            private = serialization.load_der_private_key(
                _decrypt_pkcs8(_pem_der(pem), passphrase.encode()), None
            )
        else:
            private = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError, IndexError):
        raise LegacyKeyError(f"{path}: wrong passphrase or not a private key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise LegacyKeyError(f"{path}: not an ECDSA P-256 key (notary's root keys are)")
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    canonical = ecdsa_key(spki).key_id
    for key in root_keys:
        if key.canonical_id == canonical:
            return LegacyRootKey(key.key_id, private)
    raise LegacyKeyError(f"{path}: key {canonical} is not a root key of this repository")
