"""Verifying what a notary-server serves, the way notary's client does.

Root trust first (``trustpinning``: trust on first use, pinned certificate IDs or a CA;
every root rotation signed by the previous root's role and by its own), then timestamp
-> snapshot -> targets -> delegations: signatures and thresholds from the role that
delegates, lengths and hashes from the file above, versions never below what was
trusted, nothing expired. Pure functions over bytes: fetching is the caller's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from signer_client.trust.metadata import (
    MIN_RSA_BITS,
    DelegatedRole,
    Envelope,
    FileMeta,
    MetadataError,
    PublicKey,
    Root,
    Snapshot,
    Targets,
    Timestamp,
    VerificationError,
    cert_bundle_key,
    now_or_utc,
    verify_role,
)

__all__ = ["TrustPinning", "VerifiedRepository", "verify_repository", "verify_root"]

_M = TypeVar("_M", Root, Targets, Snapshot, Timestamp)


# -- root trust -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustPinning:
    """notary's ``trust_pinning`` client configuration.

    ``certs``: GUN (or ``prefix*``) -> IDs of the root certificate keys to accept (the
    ``ecdsa-x509`` key IDs as they appear in root.json). ``ca``: GUN prefix -> CA bundle
    (PEM bytes or a file) a root certificate must chain to. Otherwise trust on first use,
    unless ``disable_tofu``.
    """

    certs: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ca: Mapping[str, bytes | Path] = field(default_factory=dict)
    disable_tofu: bool = False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def _match_cn(common_name: str, gun: str) -> bool:
    """``trustpinning.MatchCNToGun``: exact, or a ``prefix*`` wildcard."""
    if common_name.endswith("*"):
        return gun.startswith(common_name.rstrip("*"))
    return common_name == gun


_SHA1_SIGNATURES = {
    x509.SignatureAlgorithmOID.RSA_WITH_SHA1,
    x509.SignatureAlgorithmOID.DSA_WITH_SHA1,
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA1,
}


def _certificate_problem(
    cert: x509.Certificate, check_expiry: bool, now: dt.datetime
) -> str | None:
    """``utils.ValidateCertificate``: why notary would refuse ``cert``, or None."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_before > not_after:
        return "validity window is invalid"
    if cert.signature_algorithm_oid in _SHA1_SIGNATURES:
        return "uses a SHA1 signature algorithm"
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return "RSA key is too short"
    if check_expiry and (now + dt.timedelta(days=1) < not_before or now > not_after):
        return "expired or not yet valid"
    return None


def _root_cert_keys(
    root: Root, gun: str, check_expiry: bool, now: dt.datetime
) -> tuple[dict[str, PublicKey], dict[str, str]]:
    """The root role's certificate keys that are valid for ``gun`` (``parseAllCerts`` +
    ``validRootLeafCerts`` + ``CertsToKeys``), rebuilt from the certificates as notary
    does, by key ID; and why each other root key was left out."""
    usable: dict[str, PublicKey] = {}
    refused: dict[str, str] = {}
    spec = root.roles.get("root")
    for kid in spec.keyids if spec else []:
        key = root.keys.get(kid)
        certs = key.certificates() if key is not None else []
        leaves = [c for c in certs if not _is_ca(c)]
        if not certs or len(leaves) != 1 or _is_ca(certs[0]):
            refused[kid] = "not a single leaf certificate"
            continue
        leaf = leaves[0]
        if not _match_cn(_common_name(leaf), gun):
            refused[kid] = f"certificate CN {_common_name(leaf)!r} is not {gun}"
            continue
        problem = _certificate_problem(leaf, check_expiry, now)
        if problem:
            refused[kid] = f"certificate {problem}"
            continue
        intermediates = [
            c for c in certs if _is_ca(c) and _certificate_problem(c, True, now) is None
        ]
        rebuilt = cert_bundle_key([leaf, *intermediates])
        usable[rebuilt.key_id] = rebuilt
    return usable, refused


def _load_ca(source: bytes | Path) -> list[x509.Certificate]:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise VerificationError("could not load the pinned CA bundle") from exc


def _chains_to(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> bool:
    """Whether ``cert`` chains through ``intermediates`` to one of ``roots`` (signatures,
    validity, CA flags). Go's ``Certificate.Verify`` also applies extended key usage
    rules; this check does not."""
    current, seen = cert, 0
    while seen <= len(intermediates):
        for ca in roots:
            if ca.subject == current.issuer and _issued_by(current, ca, now):
                return True
        parent = next(
            (
                c
                for c in intermediates
                if c.subject == current.issuer and _issued_by(current, c, now)
            ),
            None,
        )
        if parent is None:
            return False
        current, seen = parent, seen + 1
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> bool:
    if not _is_ca(issuer) or not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _pin_check(
    pinning: TrustPinning, gun: str, first_bootstrap: bool, now: dt.datetime
) -> Callable[[PublicKey], bool]:
    """``trustpinning.NewTrustPinChecker``: exact GUN cert IDs, else the longest wildcard
    ``prefix*`` cert IDs, else the longest CA prefix, else TOFU."""
    if gun in pinning.certs:
        ids = set(pinning.certs[gun])
        return lambda key: key.key_id in ids
    wildcard = [p for p in pinning.certs if p.endswith("*") and gun.startswith(p[:-1])]
    if wildcard:
        ids = set(pinning.certs[max(wildcard, key=len)])
        return lambda key: key.key_id in ids
    prefixes = [p for p in pinning.ca if gun.startswith(p)]
    if prefixes:
        cas = [
            c
            for c in _load_ca(pinning.ca[max(prefixes, key=len)])
            if _certificate_problem(c, True, now) is None
        ]
        if not cas:
            raise VerificationError("root: invalid CA certs provided in trust pinning")

        def ca_check(key: PublicKey) -> bool:
            certs = key.certificates()
            return bool(certs) and _chains_to(certs[0], certs[1:], cas, now)

        return ca_check
    if pinning.disable_tofu and first_bootstrap:
        raise VerificationError(f"root: no trust pinning for {gun} and TOFU is disabled")
    return lambda key: True


def verify_root(
    envelope: Envelope,
    gun: str,
    *,
    previous: Root | None = None,
    pinning: TrustPinning | None = None,
    min_version: int = 1,
    allow_expired: bool = False,
    now: dt.datetime | None = None,
) -> Root:
    """``trustpinning.ValidateRoot`` and the builder's root checks.

    With a ``previous`` (trusted) root, the new one must carry a threshold of signatures
    by the previous root role's certificates (the rotation rule). Always, its own root
    certificates (CN == ``gun``, valid, pinned or TOFU) must meet its own threshold.
    Then version >= ``min_version`` and, unless ``allow_expired``, not expired.
    """
    when = now_or_utc(now)
    try:
        root = Root.from_envelope(envelope)
    except MetadataError as exc:
        raise VerificationError(f"root: {exc}") from exc
    root.validate()
    if previous is not None:
        trusted, _ = _root_cert_keys(previous, gun, False, when)
        spec = previous.roles.get("root")
        try:
            verify_role(envelope, trusted, trusted, spec.threshold if spec else 1)
        except VerificationError as exc:
            raise VerificationError(
                f"root: version {root.version} is not signed by the trusted root "
                f"(version {previous.version}) keys: {str(exc).removeprefix('metadata: ')}"
            ) from exc
    usable, refused = _root_cert_keys(root, gun, True, when)
    if not usable:
        why = "; ".join(f"{k[:12]}: {v}" for k, v in refused.items()) or "no root keys"
        raise VerificationError(f"root: no valid root certificate for {gun} ({why})")
    check = _pin_check(pinning or TrustPinning(), gun, previous is None, when)
    pinned = {kid: key for kid, key in usable.items() if check(key)}
    if not pinned:
        raise VerificationError(f"root: no root certificate matches the trust pinning for {gun}")
    try:
        verify_role(envelope, pinned, pinned, root.roles["root"].threshold, "root")
    except VerificationError as exc:
        raise VerificationError(f"{exc} (root not signed by its own root keys)") from exc
    root.check_version("root", min_version)
    if not allow_expired:
        root.check_expiry("root", when)
    return root


# -- the whole repository -------------------------------------------------------------------


def _restrict_paths(parent: Sequence[str], child: Sequence[str]) -> list[str]:
    """``data.RestrictDelegationPathPrefixes``: the child's paths under a parent path."""
    return [p for p in child if any(p.startswith(pp) for pp in parent)]


@dataclass
class VerifiedRepository:
    """A repository whose every file checked out; what the verifier hands back."""

    gun: str
    root: Root
    timestamp: Timestamp
    snapshot: Snapshot
    targets: Targets
    delegations: dict[str, Targets] = field(default_factory=dict)  # walk order
    paths: dict[str, list[str]] = field(default_factory=dict)  # effective, per role
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # delegated role -> why

    def versions(self) -> dict[str, int]:
        """Each role's version: ``min_versions`` for the next verification."""
        out = {
            "root": self.root.version,
            "timestamp": self.timestamp.version,
            "snapshot": self.snapshot.version,
            "targets": self.targets.version,
        }
        out.update({name: t.version for name, t in self.delegations.items()})
        return out

    def roles(self) -> dict[str, Targets]:
        """``targets`` and every verified delegated role, in notary's walk order."""
        return {"targets": self.targets, **self.delegations}

    def list_targets(self) -> dict[str, tuple[str, FileMeta]]:
        """Target name -> (role, meta), the first role in walk order winning, as
        ``notary list``; targets outside a role's paths are left out."""
        out: dict[str, tuple[str, FileMeta]] = {}
        for role, targets in self.roles().items():
            paths = self.paths.get(role, [""])
            for name, meta in targets.targets.items():
                if name not in out and any(name.startswith(p) for p in paths):
                    out[name] = (role, meta)
        return out


def _parse(raw: bytes, role: str) -> Envelope:
    try:
        return Envelope.from_bytes(raw)
    except MetadataError as exc:
        raise VerificationError(f"{role}: {exc}") from exc


def _model(cls: type[_M], envelope: Envelope, role: str) -> _M:
    try:
        return cls.from_envelope(envelope, role)
    except MetadataError as exc:
        raise VerificationError(f"{role}: {exc}") from exc


def verify_repository(
    gun: str,
    fetch: Callable[[str], bytes],
    *,
    trusted_root: Root | None = None,
    min_versions: Mapping[str, int] | None = None,
    pinning: TrustPinning | None = None,
    now: dt.datetime | None = None,
    strict: bool = True,
) -> VerifiedRepository:
    """Fetch and verify a whole repository the way notary's client does.

    ``fetch(name)`` returns a file's bytes: ``"root"``, ``"<N>.root"``, ``"timestamp"``,
    ``"snapshot"``, ``"targets"``, ``"targets/<name>"`` (``NotaryServerClient.get``
    takes the same names). Root: trust on first use / ``pinning`` when there is no
    ``trusted_root``; otherwise every version from the trusted one to the newest must
    be signed by its predecessor's root role and by its own. Then timestamp -> snapshot
    -> targets -> delegations: signatures and thresholds from the role that delegates,
    lengths and hashes from the file above, versions not below ``min_versions`` (the
    previous result's ``versions()``), nothing expired at ``now``, and root/targets as
    recorded in the snapshot.

    ``strict``: a delegated role that fails its signature threshold, expiry or paths
    raises; with ``strict=False`` it is left out and noted in ``skipped``, as notary
    does (other failures always raise).
    """
    when = now_or_utc(now)
    floors = dict(min_versions or {})
    raw: dict[str, bytes] = {}
    envelopes: dict[str, Envelope] = {}

    raw["root"] = fetch("root")
    envelopes["root"] = _parse(raw["root"], "root")
    if trusted_root is None:
        root = verify_root(
            envelopes["root"], gun, pinning=pinning, min_version=floors.get("root", 1), now=when
        )
    else:
        newest = envelopes["root"].version
        if newest < trusted_root.version:
            raise VerificationError(
                f"root: version {newest} is lower than trusted version {trusted_root.version}"
            )
        previous = trusted_root
        for version in range(trusted_root.version + 1, newest):
            name = f"{version}.root"
            previous = verify_root(
                _parse(fetch(name), name),
                gun,
                previous=previous,
                pinning=pinning,
                min_version=version,
                allow_expired=True,
                now=when,
            )
        root = verify_root(
            envelopes["root"],
            gun,
            previous=previous,
            pinning=pinning,
            min_version=max(trusted_root.version, floors.get("root", 1)),
            now=when,
        )

    def top_level(role: str, cls: type[_M], meta: FileMeta | None) -> _M:
        raw[role] = fetch(role)
        if meta is not None:
            meta.check(raw[role], role)
        envelopes[role] = _parse(raw[role], role)
        model = _model(cls, envelopes[role], role)
        spec = root.roles[role]
        verify_role(envelopes[role], root.keys, spec.keyids, spec.threshold, role)
        model.validate()
        model.check_version(role, floors.get(role, 1))
        model.check_expiry(role, when)
        return model

    timestamp = top_level("timestamp", Timestamp, None)
    snapshot = top_level("snapshot", Snapshot, timestamp.meta["snapshot"])
    snapshot.meta["root"].check(raw["root"], "root (as recorded in the snapshot)")
    targets = top_level("targets", Targets, snapshot.meta["targets"])

    repo = VerifiedRepository(gun, root, timestamp, snapshot, targets)
    repo.envelopes, repo.raw, repo.paths = envelopes, raw, {"targets": [""]}
    # Depth first, children before the parent's later siblings (tufclient.downloadTargets).
    queue: list[tuple[DelegatedRole, Targets, list[str]]] = [
        (child, targets, [""]) for child in targets.delegations.roles
    ]
    while queue:
        child, parent, parent_paths = queue.pop(0)
        name = child.name
        meta = snapshot.meta.get(name)
        if meta is None:  # notary skips a role the snapshot does not record
            repo.skipped[name] = "not in the snapshot"
            continue
        raw[name] = fetch(name)
        meta.check(raw[name], name)
        envelopes[name] = _parse(raw[name], name)
        model = _model(Targets, envelopes[name], name)
        model.validate(name)
        paths = _restrict_paths(parent_paths, child.paths)
        model.check_version(name, floors.get(name, 1))  # always fatal, as in notary
        try:
            verify_role(
                envelopes[name], parent.delegations.keys, child.keyids, child.threshold, name
            )
            model.check_expiry(name, when)
            outside = [t for t in model.targets if not any(t.startswith(p) for p in paths)]
            if outside and strict:
                raise VerificationError(
                    f"{name}: targets outside the delegated paths {paths}: {', '.join(outside)}"
                )
        except VerificationError as exc:
            if strict:
                raise
            repo.skipped[name] = str(exc)
            continue
        repo.delegations[name] = model
        repo.paths[name] = paths
        queue[:0] = [(grandchild, model, paths) for grandchild in model.delegations.roles]
    return repo
