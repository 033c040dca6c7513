"""Notary's TUF metadata: keys, signatures, envelopes, role models (checks: ``verify``).

Everything here mirrors what notary (github.com/notaryproject/notary, ``tuf/data``,
``tuf/signed``, ``tuf/utils``, ``trustpinning``) writes and accepts, because the other
side of every file is a stock notary-server or notary/docker client:

- a key is ``{"keytype": ..., "keyval": {"private": null, "public": <base64>}}`` and its
  ID is the SHA-256 of that object's canonical JSON (``TUFKey.ID``). ``ecdsa`` and
  ``rsa`` public values are DER SubjectPublicKeyInfo, ``ed25519`` the raw 32 bytes,
  ``ecdsa-x509``/``rsa-x509`` a PEM certificate. The *canonical* ID of a certificate
  key is the ID of the plain key inside it (``utils.CanonicalKeyID``): that is the ID a
  private key goes by (``notary key list``), while metadata and signatures name the
  certificate key by its own ID;
- a signature is ``{"keyid", "method", "sig"}``; ``ecdsa`` is raw ``r || s`` over
  SHA-256 of the payload, ``eddsa`` plain Ed25519, ``rsapss`` PSS/SHA-256 with a
  32-byte salt;
- the payload is the canonical JSON of ``signed`` (:mod:`.canonical`); the file is
  ``{"signed": ..., "signatures": [...]}`` written by Go's ``json.Marshal``, and
  snapshot/timestamp hashes cover those exact file bytes;
- times are Go's ``time.Time`` JSON: RFC 3339 with up to nine fractional digits.

Role models keep fields they do not know (``unrecognized_fields``) and the exact text of
an unchanged ``expires``, so ``encode(Model.from_signed(d).to_signed()) == encode(d)``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from signer_client.trust import canonical

__all__ = [
    "BASE_ROLES",
    "DelegatedRole",
    "Delegations",
    "Envelope",
    "FileMeta",
    "MetadataError",
    "PublicKey",
    "RoleKeys",
    "Root",
    "Signature",
    "Snapshot",
    "TargetMeta",
    "Targets",
    "Timestamp",
    "VerificationError",
    "certificate_key",
    "ecdsa_key",
    "ed25519_key",
    "go_time",
    "is_delegation",
    "parse_go_time",
    "public_key_from_pem",
    "rsa_key",
    "signature_method",
    "verify_role",
]

ECDSA, ECDSA_X509, ED25519, RSA, RSA_X509 = "ecdsa", "ecdsa-x509", "ed25519", "rsa", "rsa-x509"
X509_TYPES = (ECDSA_X509, RSA_X509)
BASE_ROLES = ("root", "targets", "snapshot", "timestamp")
TUF_TYPES = {"root": "Root", "targets": "Targets", "snapshot": "Snapshot", "timestamp": "Timestamp"}
# notary.NotaryRootExpiry etc.: what notary gives new metadata (a year is 365 days).
DEFAULT_EXPIRY = {
    "root": dt.timedelta(days=10 * 365),
    "targets": dt.timedelta(days=3 * 365),
    "snapshot": dt.timedelta(days=3 * 365),
    "timestamp": dt.timedelta(days=14),
}
NOTARY_HASHES = ("sha256", "sha512")  # data.NotaryDefaultHashes
MIN_RSA_BITS = 2048
_DELEGATION_NAME = re.compile(r"^[-a-z0-9_/]+$")


class MetadataError(ValueError):
    """Metadata that does not parse as notary's (missing field, wrong type, bad base64)."""


class VerificationError(Exception):
    """Metadata that parses but must not be trusted; the message says which role and why."""


# -- time -----------------------------------------------------------------------------------

_GO_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


def go_time(when: dt.datetime) -> str:
    """``when`` as Go's ``time.Time`` marshals to JSON (RFC 3339, fraction without
    trailing zeros, ``Z`` for a zero offset). A naive ``when`` is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    fraction = f"{when.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def parse_go_time(text: str) -> dt.datetime:
    """A Go RFC 3339 time as an aware datetime (digits past microseconds are dropped:
    Python has no nanoseconds; the models keep the original text for re-encoding)."""
    match = _GO_TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise MetadataError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "").ljust(6, "0")[:6])
    if zone == "Z":
        tz = dt.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError as exc:
        raise MetadataError(f"not a valid time: {text!r} ({exc})") from exc


def now_or_utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def default_expiry(role: str, now: dt.datetime | None = None) -> dt.datetime:
    """When notary would let new ``role`` metadata expire (delegations: as targets)."""
    base = "targets" if is_delegation(role) else role
    return now_or_utc(now) + DEFAULT_EXPIRY.get(base, DEFAULT_EXPIRY["targets"])


# -- parsing helpers ------------------------------------------------------------------------


def _b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MetadataError(f"{what}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MetadataError(f"{what}: invalid base64") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, Mapping):
        raise MetadataError(f"{what}: expected an object, got {type(obj).__name__}")
    if name not in obj:
        raise MetadataError(f"{what}: missing {name!r}")
    value = obj[name]
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MetadataError(f"{what}: {name!r} has the wrong type ({type(value).__name__})")
    return value


def _rest(obj: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    skip = set(known)
    return {k: v for k, v in obj.items() if k not in skip}


def is_delegation(role: str) -> bool:
    """notary's ``data.IsDelegation``: ``targets/...``, lower-case path characters,
    clean (no ``..``, ``//`` or trailing slash), shorter than 256."""
    if not role.startswith("targets/") or len(role) >= 256:
        return False
    if not _DELEGATION_NAME.match(role):
        return False
    parts = role.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def _parent(role: str) -> str:
    return role.rsplit("/", 1)[0] if "/" in role else "."


# -- keys -----------------------------------------------------------------------------------


def signature_method(keytype: str) -> str:
    """The ``method`` notary writes for a signature by a key of ``keytype``."""
    if keytype in (ECDSA, ECDSA_X509):
        return "ecdsa"
    if keytype == ED25519:
        return "eddsa"
    if keytype in (RSA, RSA_X509):
        return "rsapss"
    raise MetadataError(f"no signature method for key type {keytype!r}")


@dataclass(frozen=True)
class PublicKey:
    """A public key as notary metadata holds it (``data.TUFKey`` without a private part)."""

    keytype: str
    public: bytes

    @cached_property
    def key_id(self) -> str:
        """notary's ``TUFKey.ID()``: what metadata and signatures call this key."""
        data = canonical.encode(
            {"keytype": self.keytype, "keyval": {"private": None, "public": self.public}}
        )
        return hashlib.sha256(data).hexdigest()

    @cached_property
    def canonical_id(self) -> str:
        """``utils.CanonicalKeyID``: for a certificate, the ID of the key inside it (the
        ID of the private key, as ``notary key list`` prints it); otherwise ``key_id``."""
        if self.keytype not in X509_TYPES:
            return self.key_id
        cert = self.certificate()
        if cert is None:
            raise MetadataError(f"{self.keytype} key {self.key_id[:12]} holds no certificate")
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PublicKey(ECDSA if self.keytype == ECDSA_X509 else RSA, spki).key_id

    def to_dict(self) -> dict[str, Any]:
        return {"keytype": self.keytype, "keyval": {"private": None, "public": _b64(self.public)}}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str = "key") -> PublicKey:
        keytype = _field(obj, "keytype", str, what)
        keyval = _field(obj, "keyval", Mapping, what)
        return cls(keytype, _b64decode(_field(keyval, "public", str, what), f"{what} public"))

    def certificates(self) -> list[x509.Certificate]:
        """The certificates of an x509 key, in file order (leaf first); [] otherwise."""
        if self.keytype not in X509_TYPES:
            return []
        try:
            return x509.load_pem_x509_certificates(self.public)
        except ValueError:
            return []

    def certificate(self) -> x509.Certificate | None:
        """The first certificate of an x509 key (what notary verifies with)."""
        certs = self.certificates()
        return certs[0] if certs else None

    def crypto_key(self) -> Any:
        """The ``cryptography`` public key object, or None if it does not parse."""
        try:
            if self.keytype == ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(self.public)
            if self.keytype in (ECDSA, RSA):
                return serialization.load_der_public_key(self.public)
            cert = self.certificate()
            return cert.public_key() if cert is not None else None
        except ValueError:
            return None

    def verify(self, method: str, sig: bytes, content: bytes) -> bool:
        """Whether ``sig`` by this key over ``content`` verifies, with notary's
        verifier for ``method`` (``tuf/signed/verifiers.go``)."""
        method = method.lower()
        key = self.crypto_key()
        try:
            if method == "ecdsa" and self.keytype in (ECDSA, ECDSA_X509):
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    return False
                octets = (key.curve.key_size + 7) // 8
                if len(sig) != 2 * octets:
                    return False
                r = int.from_bytes(sig[:octets], "big")
                s = int.from_bytes(sig[octets:], "big")
                key.verify(encode_dss_signature(r, s), content, ec.ECDSA(hashes.SHA256()))
                return True
            if method == "eddsa" and self.keytype == ED25519:
                if not isinstance(key, ed25519.Ed25519PublicKey) or len(sig) != 64:
                    return False
                key.verify(sig, content)
                return True
            if method in ("rsapss", "rsapkcs1v15") and self.keytype in (RSA, RSA_X509):
                if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
                    return False
                if len(sig) < MIN_RSA_BITS // 8:
                    return False
                pad: padding.AsymmetricPadding = (
                    padding.PSS(padding.MGF1(hashes.SHA256()), 32)
                    if method == "rsapss"
                    else padding.PKCS1v15()
                )
                key.verify(sig, content, pad, hashes.SHA256())
                return True
        except InvalidSignature:
            return False
        return False


def ecdsa_key(spki_der: bytes) -> PublicKey:
    """An ``ecdsa`` key from its DER SubjectPublicKeyInfo."""
    return PublicKey(ECDSA, spki_der)


def ed25519_key(raw: bytes) -> PublicKey:
    """An ``ed25519`` key from its raw 32 bytes."""
    return PublicKey(ED25519, raw)


def rsa_key(spki_der: bytes) -> PublicKey:
    """An ``rsa`` key from its DER SubjectPublicKeyInfo."""
    return PublicKey(RSA, spki_der)


def _cert_pem(certs: Sequence[x509.Certificate]) -> bytes:
    # Go's pem.EncodeToMemory and cryptography write the same PEM (64-column base64).
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def cert_bundle_key(certs: Sequence[x509.Certificate]) -> PublicKey:
    """``utils.CertBundleToKey``: an x509 key typed by the leaf (first) certificate."""
    public = certs[0].public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return PublicKey(ECDSA_X509, _cert_pem(certs))
    if isinstance(public, rsa.RSAPublicKey):
        return PublicKey(RSA_X509, _cert_pem(certs))
    raise MetadataError(
        f"notary has no certificate key type for {type(public).__name__} (ECDSA and RSA only)"
    )


def certificate_key(pem: bytes) -> PublicKey:
    """The ``ecdsa-x509``/``rsa-x509`` key of the first certificate in ``pem``, re-encoded
    as notary does (``utils.CertToKey``), so its ID matches notary's."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise MetadataError("no certificate in PEM data") from exc
    return cert_bundle_key(certs[:1])


def public_key_from_pem(pem: bytes) -> PublicKey:
    """``utils.ParsePEMPublicKey``: a ``PUBLIC KEY`` (ecdsa, rsa; ed25519 as an extension)
    or a ``CERTIFICATE`` block."""
    text = pem.lstrip()
    if text.startswith(b"-----BEGIN CERTIFICATE-----"):
        return certificate_key(pem)
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise MetadataError("no PUBLIC KEY or CERTIFICATE in PEM data") from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ed25519_key(
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ecdsa_key(spki)
    if isinstance(key, rsa.RSAPublicKey):
        return rsa_key(spki)
    raise MetadataError(f"unsupported public key type {type(key).__name__}")


def _keys_from_dict(obj: Any, what: str) -> dict[str, PublicKey]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise MetadataError(f"{what}: expected an object of keys")
    return {kid: PublicKey.from_dict(v, f"{what} {kid}") for kid, v in obj.items()}


# -- signatures and envelopes ---------------------------------------------------------------


@dataclass
class Signature:
    """One signature: ``sig`` holds the raw bytes (base64 on the wire)."""

    keyid: str
    sig: bytes
    method: str = "ecdsa"

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "method": self.method, "sig": _b64(self.sig)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Signature:
        keyid = _field(obj, "keyid", str, "signature")
        method = _field(obj, "method", str, "signature").lower()  # as notary's UnmarshalJSON
        return cls(keyid, _b64decode(_field(obj, "sig", str, "signature"), "signature"), method)


@dataclass
class Envelope:
    """``{"signed": ..., "signatures": [...]}``: a metadata file, signed or not."""

    signed: dict[str, Any]
    signatures: list[Signature] = field(default_factory=list)

    def payload(self) -> bytes:
        """The bytes every signature covers: canonical JSON of ``signed``."""
        return canonical.encode(self.signed)

    def to_bytes(self) -> bytes:
        """The file as notary writes it (``json.Marshal`` of ``data.Signed``)."""
        sigs = ",".join(
            json.dumps(s.to_dict(), separators=(",", ":"), ensure_ascii=False)
            for s in self.signatures
        )
        return (
            b'{"signed":'
            + canonical.html_escape(self.payload())
            + b',"signatures":['
            + canonical.html_escape(sigs.encode())
            + b"]}"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MetadataError(f"not JSON: {exc}") from exc
        signed = _field(obj, "signed", dict, "metadata")
        sigs = obj.get("signatures")
        if sigs is None:
            sigs = []
        if not isinstance(sigs, list):
            raise MetadataError("metadata: 'signatures' is not a list")
        return cls(signed, [Signature.from_dict(s) for s in sigs])

    @property
    def type(self) -> str:
        value = self.signed.get("_type")
        return value if isinstance(value, str) else ""

    @property
    def version(self) -> int:
        value = self.signed.get("version")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def add_signature(self, keyid: str, raw_sig: bytes, method: str = "ecdsa") -> None:
        """Add (or replace) ``keyid``'s signature; for ECDSA ``raw_sig`` is ``r || s``."""
        self.signatures = [s for s in self.signatures if s.keyid != keyid]
        self.signatures.append(Signature(keyid, raw_sig, method))


def verify_role(
    envelope: Envelope,
    keys: Mapping[str, PublicKey],
    keyids: Iterable[str],
    threshold: int,
    role: str = "metadata",
) -> set[str]:
    """Check ``envelope`` has ``threshold`` valid signatures by distinct keys among
    ``keyids`` (``signed.VerifySignatures``); returns the IDs that verified.

    A signature naming a listed key whose content hashes to another ID is an error, as
    in notary; signatures by unknown keys, by other methods or that do not verify are
    skipped and only count against the threshold.
    """
    if not envelope.signatures:
        raise VerificationError(f"{role}: no signatures")
    if threshold < 1:
        raise VerificationError(f"{role}: invalid threshold {threshold}")
    allowed = {kid: keys[kid] for kid in keyids if kid in keys}
    payload = envelope.payload()
    valid: set[str] = set()
    failed: list[str] = []
    for sig in envelope.signatures:
        key = allowed.get(sig.keyid)
        if key is None:
            continue
        if key.key_id != sig.keyid:
            raise VerificationError(f"{role}: key {sig.keyid} does not hash to its ID")
        if key.verify(sig.method, sig.sig, payload):
            valid.add(sig.keyid)
        else:
            failed.append(sig.keyid[:12])
    if len(valid) < threshold:
        detail = f"; invalid signatures by {', '.join(failed)}" if failed else ""
        raise VerificationError(
            f"{role}: {len(valid)} of {threshold} required signatures valid "
            f"(role keys {', '.join(k[:12] for k in allowed) or 'none known'}{detail})"
        )
    return valid


# -- role models ----------------------------------------------------------------------------


@dataclass
class RoleKeys:
    """A role's key IDs and threshold (``data.RootRole``)."""

    keyids: list[str]
    threshold: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": list(self.keyids), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> RoleKeys:
        keyids = obj.get("keyids") if isinstance(obj, Mapping) else None
        return cls(_str_list(keyids, f"{what} keyids"), _field(obj, "threshold", int, what))


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MetadataError(f"{what}: expected a list of strings")
    return list(value)


@dataclass
class FileMeta:
    """Length and hashes of a file (``data.FileMeta``): a target, or a metadata file in
    snapshot/timestamp. ``custom`` is arbitrary JSON, omitted when None."""

    length: int
    hashes: dict[str, bytes]
    custom: Any = None

    @classmethod
    def from_data(cls, data: bytes, algorithms: Sequence[str] = NOTARY_HASHES) -> FileMeta:
        """The meta of ``data``; sha256 and sha512 as notary records them."""
        return cls(len(data), {alg: hashlib.new(alg, data).digest() for alg in algorithms})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "length": self.length,
            "hashes": {alg: _b64(h) for alg, h in self.hashes.items()},
        }
        if self.custom is not None:
            out["custom"] = self.custom
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> FileMeta:
        hashes = obj.get("hashes") if isinstance(obj, Mapping) else None
        if hashes is not None and not isinstance(hashes, Mapping):
            raise MetadataError(f"{what}: 'hashes' is not an object")
        return cls(
            _field(obj, "length", int, what),
            {alg: _b64decode(h, f"{what} {alg}") for alg, h in (hashes or {}).items()},
            obj.get("custom"),
        )

    def check(self, data: bytes, what: str) -> None:
        """``data.CheckHashes`` plus the length: every sha256/sha512 hash must match and
        there must be at least one of them."""
        if len(data) != self.length:
            raise VerificationError(f"{what}: length {len(data)} != {self.length} recorded")
        checked = 0
        for alg in NOTARY_HASHES:
            expected = self.hashes.get(alg)
            if expected is None:
                continue
            if not hmac.compare_digest(hashlib.new(alg, data).digest(), expected):
                raise VerificationError(f"{what}: {alg} does not match the recorded hash")
            checked += 1
        if not checked:
            raise VerificationError(f"{what}: no sha256 or sha512 hash recorded")


TargetMeta = FileMeta


_M = TypeVar("_M", bound="_Signed")


class _Signed:
    """What every role model shares: ``_type``, ``version``, ``expires`` and the fields
    notary does not know (kept for byte-identical round trips)."""

    TYPE: ClassVar[str]
    version: int
    expires: dt.datetime
    unrecognized_fields: dict[str, Any]
    _expires_text: str | None

    def _common(self) -> dict[str, Any]:
        text = self._expires_text
        if text is None or parse_go_time(text) != self.expires:
            text = go_time(self.expires)
        out = dict(self.unrecognized_fields)
        out.update({"_type": self.TYPE, "version": self.version, "expires": text})
        return out

    @classmethod
    def _parse_common(cls, signed: Mapping[str, Any], what: str) -> tuple[int, dt.datetime, str]:
        kind = _field(signed, "_type", str, what)
        if kind != cls.TYPE:
            raise MetadataError(f"{what}: expected _type {cls.TYPE}, not {kind}")
        text = _field(signed, "expires", str, what)
        return _field(signed, "version", int, what), parse_go_time(text), text

    def to_signed(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self) -> None:
        """notary's structure checks for the role (``isValid*Structure``)."""
        raise NotImplementedError

    def envelope(self) -> Envelope:
        """An unsigned envelope around this model."""
        return Envelope(self.to_signed())

    def payload(self) -> bytes:
        """The canonical bytes a signature over this model covers."""
        return canonical.encode(self.to_signed())

    @classmethod
    def from_envelope(cls: type[_M], envelope: Envelope, role: str = "") -> _M:
        raise NotImplementedError

    def check_version(self, role: str, min_version: int) -> None:
        """``signed.VerifyVersion``: not below ``min_version`` (nor below 1)."""
        if self.version < max(1, min_version):
            floor = "the minimum of 1" if min_version < 1 else f"trusted version {min_version}"
            raise VerificationError(f"{role}: version {self.version} is lower than {floor}")

    def check_expiry(self, role: str, now: dt.datetime | None = None) -> None:
        """``signed.VerifyExpiry``: not expired at ``now`` (default: the current time)."""
        if self.expires < now_or_utc(now):
            raise VerificationError(f"{role}: expired at {go_time(self.expires)}")


@dataclass
class Root(_Signed):
    """``root.json``: every key, and which of them each top-level role needs."""

    keys: dict[str, PublicKey] = field(default_factory=dict)
    roles: dict[str, RoleKeys] = field(default_factory=dict)
    version: int = 1
    expires: dt.datetime = field(default_factory=lambda: default_expiry("root"))
    consistent: bool = False
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    _expires_text: str | None = field(default=None, repr=False, compare=False)

    TYPE: ClassVar[str] = "Root"

    def to_signed(self) -> dict[str, Any]:
        out = self._common()
        out["keys"] = {kid: k.to_dict() for kid, k in self.keys.items()}
        out["roles"] = {name: r.to_dict() for name, r in self.roles.items()}
        out["consistent_snapshot"] = self.consistent
        return out

    @classmethod
    def from_signed(cls, signed: Mapping[str, Any]) -> Root:
        version, expires, text = cls._parse_common(signed, "root")
        roles = _field(signed, "roles", Mapping, "root")
        consistent = signed.get("consistent_snapshot", False)
        if not isinstance(consistent, bool):
            raise MetadataError("root: 'consistent_snapshot' is not a boolean")
        return cls(
            keys=_keys_from_dict(signed.get("keys"), "root key"),
            roles={name: RoleKeys.from_dict(r, f"root role {name}") for name, r in roles.items()},
            version=version,
            expires=expires,
            consistent=consistent,
            unrecognized_fields=_rest(
                signed, ("_type", "version", "expires", "keys", "roles", "consistent_snapshot")
            ),
            _expires_text=text,
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope, role: str = "root") -> Root:
        return cls.from_signed(envelope.signed)

    def validate(self) -> None:
        """``isValidRootStructure``: version >= 1, the four base roles, thresholds >= 1,
        and every listed key ID present in ``keys``."""
        if self.version < 1:
            raise VerificationError("root: version cannot be less than 1")
        for name in BASE_ROLES:
            role = self.roles.get(name)
            if role is None:
                raise VerificationError(f"root: missing {name} role specification")
            _check_role_keys("root", name, role.keyids, role.threshold, self.keys)

    def role_keys(self, role: str) -> dict[str, PublicKey]:
        """The keys of top-level ``role``, by ID (unknown IDs left out)."""
        spec = self.roles.get(role)
        if spec is None:
            return {}
        return {kid: self.keys[kid] for kid in spec.keyids if kid in self.keys}

    def add_key(self, role: str, key: PublicKey) -> None:
        """Add ``key`` to ``role`` (and to ``keys``); no-op if already there."""
        self.keys[key.key_id] = key
        spec = self.roles.setdefault(role, RoleKeys([], 1))
        if key.key_id not in spec.keyids:
            spec.keyids.append(key.key_id)

    def revoke_key(self, role: str, keyid: str) -> None:
        """Take ``keyid`` out of ``role``; drop it from ``keys`` if no role uses it."""
        spec = self.roles.get(role)
        if spec is not None:
            spec.keyids = [k for k in spec.keyids if k != keyid]
        if not any(keyid in r.keyids for r in self.roles.values()):
            self.keys.pop(keyid, None)


def _check_role_keys(
    where: str, name: str, keyids: Sequence[str], threshold: int, keys: Mapping[str, PublicKey]
) -> None:
    if threshold < 1:
        raise VerificationError(f"{where}: invalid threshold specified for {name}: {threshold}")
    for kid in keyids:
        if kid not in keys:
            raise VerificationError(
                f"{where}: key ID {kid} specified in {name} without corresponding key"
            )


@dataclass
class DelegatedRole:
    """One entry of ``delegations.roles`` (``data.Role``). Paths are prefixes; an empty
    list means the role may sign nothing (notary omits ``paths`` when empty)."""

    name: str
    keyids: list[str]
    threshold: int = 1
    paths: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "keyids": list(self.keyids),
            "threshold": self.threshold,
        }
        if self.paths:
            out["paths"] = list(self.paths)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> DelegatedRole:
        name = _field(obj, "name", str, "delegated role")
        what = f"delegated role {name}"
        return cls(
            name,
            _str_list(obj.get("keyids"), f"{what} keyids"),
            _field(obj, "threshold", int, what),
            _str_list(obj.get("paths"), f"{what} paths"),
        )

    def matches(self, target: str) -> bool:
        """Whether ``target`` falls under one of the path prefixes."""
        return any(target.startswith(p) for p in self.paths)


@dataclass
class Delegations:
    """``delegations``: the delegated roles' keys, and the roles in priority order."""

    keys: dict[str, PublicKey] = field(default_factory=dict)
    roles: list[DelegatedRole] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": {kid: k.to_dict() for kid, k in self.keys.items()},
            "roles": [r.to_dict() for r in self.roles],
        }

    @classmethod
    def from_dict(cls, obj: Any) -> Delegations:
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise MetadataError("targets: 'delegations' is not an object")
        roles = obj.get("roles") or []
        if not isinstance(roles, list):
            raise MetadataError("targets: delegation 'roles' is not a list")
        return cls(
            _keys_from_dict(obj.get("keys"), "delegation key"),
            [DelegatedRole.from_dict(r) for r in roles],
        )

    def role(self, name: str) -> DelegatedRole | None:
        return next((r for r in self.roles if r.name == name), None)


@dataclass
class Targets(_Signed):
    """``targets.json`` or a delegated role's file (both ``_type`` Targets)."""

    targets: dict[str, FileMeta] = field(default_factory=dict)
    delegations: Delegations = field(default_factory=Delegations)
    version: int = 1
    expires: dt.datetime = field(default_factory=lambda: default_expiry("targets"))
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    _expires_text: str | None = field(default=None, repr=False, compare=False)

    TYPE: ClassVar[str] = "Targets"

    def to_signed(self) -> dict[str, Any]:
        out = self._common()
        out["targets"] = {name: meta.to_dict() for name, meta in self.targets.items()}
        out["delegations"] = self.delegations.to_dict()  # a Go struct: never omitted
        return out

    @classmethod
    def from_signed(cls, signed: Mapping[str, Any]) -> Targets:
        version, expires, text = cls._parse_common(signed, "targets")
        targets = signed.get("targets")
        if targets is not None and not isinstance(targets, Mapping):
            raise MetadataError("targets: 'targets' is not an object")
        return cls(
            targets={n: FileMeta.from_dict(m, f"target {n}") for n, m in (targets or {}).items()},
            delegations=Delegations.from_dict(signed.get("delegations")),
            version=version,
            expires=expires,
            unrecognized_fields=_rest(
                signed, ("_type", "version", "expires", "targets", "delegations")
            ),
            _expires_text=text,
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope, role: str = "targets") -> Targets:
        return cls.from_signed(envelope.signed)

    def validate(self, role: str = "targets") -> None:
        """``isValidTargetsStructure``: a targets or delegation role, version >= 1, each
        delegation a valid direct child with threshold >= 1 and known keys."""
        if role != "targets" and not is_delegation(role):
            raise VerificationError(f"{role}: not a targets role")
        if self.version < 1:
            raise VerificationError(f"{role}: version cannot be less than one")
        for child in self.delegations.roles:
            if not is_delegation(child.name) or _parent(child.name) != role:
                raise VerificationError(f"{role}: delegation role {child.name} invalid")
            _check_role_keys(role, child.name, child.keyids, child.threshold, self.delegations.keys)


def _files_from(signed: Mapping[str, Any], what: str) -> dict[str, FileMeta]:
    meta = signed.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise MetadataError(f"{what}: 'meta' is not an object")
    return {name: FileMeta.from_dict(m, f"{what} meta {name}") for name, m in meta.items()}


def _check_hash_structure(where: str, name: str, meta: FileMeta | None) -> None:
    if meta is None or "sha256" not in meta.hashes:
        raise VerificationError(f"{where}: missing {name} sha256 checksum information")
    for alg, size in (("sha256", 32), ("sha512", 64)):
        if alg in meta.hashes and len(meta.hashes[alg]) != size:
            raise VerificationError(f"{where}: invalid {name} {alg} checksum")


@dataclass
class Snapshot(_Signed):
    """``snapshot.json``: length and hashes of root, targets and every delegated role."""

    meta: dict[str, FileMeta] = field(default_factory=dict)
    version: int = 1
    expires: dt.datetime = field(default_factory=lambda: default_expiry("snapshot"))
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    _expires_text: str | None = field(default=None, repr=False, compare=False)

    TYPE: ClassVar[str] = "Snapshot"

    def to_signed(self) -> dict[str, Any]:
        out = self._common()
        out["meta"] = {name: m.to_dict() for name, m in self.meta.items()}
        return out

    @classmethod
    def from_signed(cls, signed: Mapping[str, Any]) -> Snapshot:
        version, expires, text = cls._parse_common(signed, "snapshot")
        return cls(
            meta=_files_from(signed, "snapshot"),
            version=version,
            expires=expires,
            unrecognized_fields=_rest(signed, ("_type", "version", "expires", "meta")),
            _expires_text=text,
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope, role: str = "snapshot") -> Snapshot:
        return cls.from_signed(envelope.signed)

    def validate(self) -> None:
        """``IsValidSnapshotStructure``: root and targets recorded with sha256."""
        if self.version < 1:
            raise VerificationError("snapshot: version cannot be less than one")
        for name in ("root", "targets"):
            _check_hash_structure("snapshot", name, self.meta.get(name))


@dataclass
class Timestamp(_Signed):
    """``timestamp.json``: length and hashes of the current snapshot."""

    meta: dict[str, FileMeta] = field(default_factory=dict)
    version: int = 1
    expires: dt.datetime = field(default_factory=lambda: default_expiry("timestamp"))
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    _expires_text: str | None = field(default=None, repr=False, compare=False)

    TYPE: ClassVar[str] = "Timestamp"

    def to_signed(self) -> dict[str, Any]:
        out = self._common()
        out["meta"] = {name: m.to_dict() for name, m in self.meta.items()}
        return out

    @classmethod
    def from_signed(cls, signed: Mapping[str, Any]) -> Timestamp:
        version, expires, text = cls._parse_common(signed, "timestamp")
        return cls(
            meta=_files_from(signed, "timestamp"),
            version=version,
            expires=expires,
            unrecognized_fields=_rest(signed, ("_type", "version", "expires", "meta")),
            _expires_text=text,
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope, role: str = "timestamp") -> Timestamp:
        return cls.from_signed(envelope.signed)

    def validate(self) -> None:
        """``IsValidTimestampStructure``: the snapshot recorded with sha256."""
        if self.version < 1:
            raise VerificationError("timestamp: version cannot be less than one")
        _check_hash_structure("timestamp", "snapshot", self.meta.get("snapshot"))
