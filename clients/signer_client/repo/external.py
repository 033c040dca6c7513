"""Keys that are not in the daemon: any securesystemslib signer URI, and offline keys.

A key is given on the command line either as a daemon KEY_ID (hex, no colon) or as a
private key URI. The public key is found the way each signer documents it:

* ``file2:PATH`` (securesystemslib ``CryptoSigner``): derived from the PEM private key;
* ``hsm:[KEYID][?label=LABEL]`` (``HSMSigner``, PKCS#11 via ``PYKCS11LIB``): read from
  the token, logging in with the PIN from the secrets handler if the key is private;
* ``gcpkms:KEY``, ``awskms:KEY``, ``azurekms://VAULT.vault.azure.net/keys/NAME[/VERSION]``:
  the signers' own ``import_`` (this needs their client library and the network);
* ``signer://HOST:PORT/KEY_ID``: a daemon key named by URI;
* ``offline:PUBLIC_KEY_FILE`` (ours): a key whose private half never meets this machine
  (an air-gapped root key). Only the public key is known here (PEM SubjectPublicKeyInfo
  or a securesystemslib key JSON); it signs through ``sign --export`` / ``--import``.

The URI is remembered per key ID in ``tuf-repo.json`` (``RepoConfig.key_uris``), so a
later ``sign`` or ``publish`` finds the signer again: the repository store plays the
part of python-tuf's ``x-...-uri`` key field, and leaves published keys untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)

from signer_client.repo.daemon_keys import DaemonKeys
from signer_client.repo.errors import RepositoryError
from signer_client.repo.pin import secrets_handler
from signer_client.repo.signing import KeyRef
from signer_client.tuf_signer import parse_uri, shared_client

OFFLINE = "offline"
KMS_SCHEMES = ("gcpkms", "awskms", "azurekms")
SUPPORTED = ("signer", "file2", "hsm", *KMS_SCHEMES, OFFLINE)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ExternalKeyError(RepositoryError):
    """A key URI that cannot be used: unknown scheme, unreadable key, signer unavailable."""


class OfflineKeyError(RepositoryError):
    """An offline key was asked to sign here; it signs through export and import."""


def is_uri(spec: str) -> bool:
    """Daemon key IDs are hex; anything with a ``scheme:`` is a private key URI."""
    return bool(_URI.match(spec))


def key_ref(spec: str, role: str | None, daemon: DaemonKeys | None) -> KeyRef:
    """The key named by ``spec`` (daemon KEY_ID or URI), checked to be usable for ``role``.

    Resolving happens before anything is created or written, so a bad URI refuses the
    whole command (``init`` creates no daemon keys, ``rotate`` stages nothing).
    """
    if not is_uri(spec):
        if daemon is None:
            raise ExternalKeyError(f"{spec!r}: a daemon key ID needs a signerd client config")
        return daemon.get(spec, role)
    scheme = spec.split(":", 1)[0]
    try:
        if scheme == "signer":
            address, key_id, config = parse_uri(spec)
            ref = DaemonKeys(shared_client(address, config), address).get(key_id, role)
            return KeyRef(ref.key, spec)
        if scheme == OFFLINE:
            return KeyRef(load_public_key(Path(spec[len(OFFLINE) + 1 :])), spec)
        if scheme == "file2":
            return KeyRef(_file2_key(spec), spec)
        if scheme == "hsm":
            return KeyRef(_hsm_key(spec), spec)
        if scheme in KMS_SCHEMES:
            return KeyRef(_kms_key(scheme, spec), spec)
    except RepositoryError:
        raise
    except Exception as exc:  # each signer library fails in its own way
        raise ExternalKeyError(f"cannot use key {spec}: {_one_line(exc)}") from None
    known = ", ".join(f"{s}:" for s in SUPPORTED)
    what = (
        "a scheme tuf-repo reads no public key for"
        if scheme in SIGNER_FOR_URI_SCHEME
        else ("unknown URI scheme")
    )
    raise ExternalKeyError(f"cannot use key {spec}: {what} {scheme!r} (use {known})")


def load_public_key(path: Path) -> Key:
    """A public key file: PEM SubjectPublicKeyInfo, or securesystemslib key JSON."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExternalKeyError(f"{path}: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"{"):
            info: dict[str, Any] = json.loads(data)
            keyid = info.pop("keyid", None)
            key = SSlibKey.from_dict(keyid or "", info)
            if not keyid:
                key = SSlibKey.from_dict(_keyid_of(key), key.to_dict())
            return key
        return SSlibKey.from_crypto(load_pem_public_key(data))
    except Exception as exc:
        raise ExternalKeyError(f"{path}: not a public key ({_one_line(exc)})") from None


def _keyid_of(key: SSlibKey) -> str:
    """The securesystemslib default key ID: sha256 of the key's canonical JSON."""
    import hashlib

    from securesystemslib.formats import encode_canonical

    canonical = encode_canonical(key.to_dict())
    assert isinstance(canonical, str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _file2_key(uri: str) -> Key:
    """The public half of a ``file2:`` key (the file is read, never copied)."""
    path = uri[len("file2:") :]
    if not Path(path).is_file():
        raise ExternalKeyError(f"cannot use key {uri}: {path}: no such file")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private = load_pem_private_key(Path(path).read_bytes(), None)
    return CryptoSigner(private).public_key


def _hsm_key(uri: str) -> Key:
    """The public key of ``hsm:KEYID?label=LABEL`` (token selected by label)."""
    from securesystemslib.signer import HSMSigner

    parts = urlsplit(uri)
    key_number = int(parts.path) if parts.path else None
    label = dict(parse_qsl(parts.query)).get("label")
    _, key = HSMSigner.import_(key_number, label, secrets_handler)
    return key


def _kms_key(scheme: str, uri: str) -> Key:
    """Ask the cloud KMS for the public key (needs its client library and network)."""
    from securesystemslib.signer import AWSSigner, AzureSigner, GCPSigner

    rest = uri[len(scheme) + 1 :]
    if scheme == "gcpkms":
        return GCPSigner.import_(rest)[1]
    if scheme == "awskms":
        return AWSSigner.import_(rest)[1]
    parts = urlsplit(uri)
    segments = parts.path.strip("/").split("/")
    if not parts.hostname or len(segments) < 2 or segments[0] != "keys":
        raise ExternalKeyError(
            f"cannot use key {uri}: want azurekms://VAULT.vault.azure.net/keys/NAME[/VERSION]"
        )
    return AzureSigner.import_(parts.hostname.split(".")[0], segments[1])[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'failed'}"


class OfflineSigner(Signer):
    """Stands in for an offline key: explains how it signs instead of signing.

    Registered for the ``offline:`` scheme so the normal signing path reports, per key,
    the way forward (export, sign elsewhere, import) rather than "unknown scheme".
    """

    def __init__(self, public_key: Key) -> None:
        self._public_key = public_key

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> OfflineSigner:
        raise OfflineKeyError(
            f"key {public_key.keyid[:8]} is offline: `tuf-repo sign --export ROLE FILE`, "
            "sign FILE where the key is, then `tuf-repo sign --import SIGFILE`"
        )

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:  # pragma: no cover - never constructed
        raise OfflineKeyError(f"key {self._public_key.keyid[:8]} is offline")


SIGNER_FOR_URI_SCHEME[OFFLINE] = OfflineSigner
