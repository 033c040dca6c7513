"""The TUF payload rules for notary's dialect, signed through plain ``sign`` (signer_api.v1).

A payload is notary metadata if it is a JSON object whose ``_type`` is ``Root``,
``Targets``, ``Snapshot`` or ``Timestamp`` and which is exactly its own re-encoding as
notary's Go canonical JSON (``signer.notary.canonical``). Anything else keeps its old
meaning: standard TUF metadata (``signer.policy.tuf``, which hands notary payloads to
this module) or raw signing (``sign-raw``).

The metadata role is the request's role hint (``SignRequest.role``), else the key's
role. For notary metadata, a key

* signs only for a repository: it must be bound to one (the GUN);
* signs its own role, and a delegation key (``targets/NAME``) also ``targets/releases``,
  as ``docker trust`` has every signer do; a role other than the key's own also needs
  the policy's ``sign`` grant for that role (``keys.roles``);
* signs only the ``_type`` of that role (``Targets`` for every delegation);
* signs an ``expires`` (RFC 3339, fractional seconds and offsets as Go writes them) at
  most the policy's ``max_expiry_days`` for the role ahead;
* never signs a lower version than it signed for that role, nor a second payload at one
  version (``VersionStore``, per key and role);
* for ``Root``: every x509 certificate of the root role must name the key's GUN as its
  common name (notary's trust pinning checks the same), so a key of one repository cannot
  vouch for another's root.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from signer import names
from signer.errors import InvalidArgument, PermissionDenied, shown
from signer.identity import Principal
from signer.notary import canonical
from signer.payload import NotJson, parse_payload
from signer.policy import Operation, Policy, Resource
from signer.policy.metadata import TufPayload, VersionStore, expected_type, max_expiry_days
from signer.registry import KeyRecord

# notary's _type for each kind of role: delegations are "Targets" too.
NOTARY_TYPES = {
    "root": "Root",
    "targets": "Targets",
    "snapshot": "Snapshot",
    "timestamp": "Timestamp",
}
RELEASES = "targets/releases"
# Go's time.RFC3339Nano: fractions without trailing zeros, "Z" or a numeric offset.
_GO_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{0,8}[1-9]))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
# Go canonical JSON sorts "_type" before every lower-case key: a cheap first test.
_PREFIXES = tuple(f'{{"_type":"{t}"'.encode() for t in NOTARY_TYPES.values())


def parse_notary(payload: bytes) -> dict[str, Any] | None:
    """The parsed object if ``payload`` is notary metadata (see the module doc), else None.

    JSON that must not be signed at all raises InvalidArgument (``signer.payload``).
    Cached like ``parse_tuf``: do not modify the result.
    """
    if not payload.startswith(_PREFIXES):
        return None
    return _parse(payload)


@lru_cache(maxsize=4)
def _parse(payload: bytes) -> dict[str, Any] | None:
    try:
        parsed = parse_payload(payload)
    except NotJson:
        return None
    try:
        encoded = canonical.encode(parsed)
    except canonical.NotCanonical:
        return None
    return parsed if encoded == payload else None


def parse_go_time(text: str) -> dt.datetime:
    """An ``expires`` as Go's ``time.Time`` writes it; InvalidArgument otherwise."""
    match = _GO_TIME.fullmatch(text)
    if match is None:
        raise InvalidArgument(
            f"notary payload: expires {shown(text)} is not an RFC 3339 time as Go writes it "
            "(YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM))"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    if zone == "Z":
        tz = dt.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return dt.datetime(
            year, month, day, hour, minute, second, int((fraction + "000000")[:6]), tz
        )
    except ValueError as exc:
        raise InvalidArgument(f"notary payload: expires {shown(text)}: {exc}") from None


def notary_fields(parsed: dict[str, Any]) -> TufPayload:
    """``_type``, ``version`` and ``expires`` of notary metadata, checked."""
    kind = parsed["_type"]
    version = parsed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**63:
        raise InvalidArgument(
            "notary payload: version must be an integer from 1 to 2**63-1, "
            f"not {shown(repr(version))}"
        )
    expires = parsed.get("expires")
    if not isinstance(expires, str):
        raise InvalidArgument("notary payload: expires is missing")
    return TufPayload(kind, version, parse_go_time(expires), expires)


def may_sign_role(key: KeyRecord, role: str) -> bool:
    """A key signs its own role; a delegation key also ``targets/releases``."""
    return role == key.role or (role == RELEASES and key.role.startswith("targets/"))


def check_expiry(policy: Policy, role: str, payload: TufPayload, now: dt.datetime) -> None:
    """PermissionDenied if ``expires`` lies further ahead than the role's limit."""
    limit = max_expiry_days(policy, role)
    if limit is None:
        return
    ahead = (payload.expires - now).total_seconds() / 86400
    if ahead > limit:
        raise PermissionDenied(
            f"expires {payload.expires_text} is {ahead:.1f} days ahead; {role} "
            f"metadata may expire at most {limit:g} days ahead"
        )


def root_certificate_names(parsed: dict[str, Any]) -> dict[str, str]:
    """Key ID -> certificate common name, for each x509 key of the root role."""
    keys, roles = parsed.get("keys"), parsed.get("roles")
    root = roles.get("root") if isinstance(roles, dict) else None
    keyids = root.get("keyids") if isinstance(root, dict) else None
    if not isinstance(keys, dict) or not isinstance(keyids, list):
        raise InvalidArgument("notary Root payload: keys and roles.root.keyids are required")
    found = {}
    for keyid in keyids:
        key = keys.get(keyid) if isinstance(keyid, str) else None
        if not isinstance(key, dict):
            raise InvalidArgument(
                f"notary Root payload: root key {shown(str(keyid))} is not in keys"
            )
        keytype = key.get("keytype")
        if not (isinstance(keytype, str) and keytype.endswith("-x509")):
            continue
        keyval = key.get("keyval")
        public = keyval.get("public") if isinstance(keyval, dict) else None
        try:
            pem = base64.b64decode(public if isinstance(public, str) else "", validate=True)
            cert = x509.load_pem_x509_certificate(pem)
        except (binascii.Error, ValueError):
            raise InvalidArgument(
                f"notary Root payload: root key {keyid} ({keytype}) holds no PEM certificate"
            ) from None
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        found[keyid] = str(cns[0].value) if len(cns) == 1 else ""
    return found


class NotaryDialectRules:
    """The checks above; ``TufRules`` hands it every notary-dialect payload."""

    def __init__(self, versions: VersionStore, clock: Any = None) -> None:
        self.versions = versions
        self._now = clock or (lambda: dt.datetime.now(dt.UTC))

    def check(
        self,
        principal: Principal,
        key: KeyRecord,
        item: Any,
        parsed: dict[str, Any],
        policy: Policy,
    ) -> None:
        role = self.role_of(key, item)
        payload = self.inspect(key, role, parsed, policy)
        if role != key.role:  # the policy decides who signs which role, too
            policy.authorize(principal, Operation.SIGN, Resource(key.key_id, role, key.repository))
        digest = hashlib.sha256(item.payload).hexdigest()
        self.versions.claim(key, payload, digest, principal.name, role=role)

    def inspect_request(
        self, key: KeyRecord, item: Any, parsed: dict[str, Any], policy: Policy
    ) -> None:
        """For a quorum request: refuse now what could never be signed later."""
        role = self.role_of(key, item)
        payload = self.inspect(key, role, parsed, policy)
        last = self.versions.last(key.key_id, role)
        digest = hashlib.sha256(item.payload).hexdigest()
        if last is not None and (
            payload.version < last[0] or (payload.version == last[0] and digest != last[1])
        ):
            raise PermissionDenied(
                f"{role} version {payload.version} is not above version {last[0]}, already "
                f"signed with key {key.key_id}: versions never go back",
                reason="VERSION_ROLLBACK",
            )

    @staticmethod
    def role_of(key: KeyRecord, item: Any) -> str:
        role = getattr(item, "role", "") or key.role
        names.check_role(role)
        return role

    def inspect(
        self, key: KeyRecord, role: str, parsed: dict[str, Any], policy: Policy
    ) -> TufPayload:
        """Repository, role, type, expiry and root certificates; no version state."""
        if not key.repository:
            raise PermissionDenied(
                f"key {key.key_id} is bound to no repository: notary metadata is signed only "
                "with a key bound to its GUN (create it with repository = the GUN)"
            )
        if not may_sign_role(key, role):
            also = f" and {RELEASES!r}" if key.role.startswith("targets/") else ""
            raise PermissionDenied(
                f"key {key.key_id} is bound to role {key.role!r} and signs {key.role!r}"
                f"{also} metadata only, not {role!r}"
            )
        payload = notary_fields(parsed)
        want = NOTARY_TYPES[expected_type(role)]
        if payload.type != want:
            raise PermissionDenied(
                f"role {role!r} is {want!r} metadata; this payload is {payload.type!r} metadata"
            )
        check_expiry(policy, role, payload, self._now())
        if payload.type == "Root":
            for keyid, cn in root_certificate_names(parsed).items():
                if cn != key.repository:
                    raise PermissionDenied(
                        f"root certificate {keyid} is for {shown(cn)}, not {key.repository!r}: "
                        f"key {key.key_id} signs root metadata of {key.repository!r} only"
                    )
        return payload
