"""TUF payload rules, checked before the token is touched.

A payload is TUF metadata if it is a JSON object with a ``_type`` that is exactly the
canonical JSON encoding of itself (what TUF signs); anything else is raw signing, a
separate permission (``sign-raw``). For TUF payloads, a key bound to role R signs only:

* metadata of that role: ``_type`` equal to R for the top-level roles, ``"targets"``
  for a delegated role (whose name is the key's role);
* with ``expires`` no further ahead than the policy's ``max_expiry_days`` for the role;
* at a version no lower than the last this key signed for the role, and never a second,
  different payload at the same version (re-signing identical bytes is fine).

Notary's dialect (``_type`` ``Root``/``Targets``/..., Go canonical JSON) has rules of its
own, applied here too: see ``signer.policy.notary``. A role hint (``SignRequest.role``)
other than the key's role is for notary metadata only.

The last version per (key, role) lives in the shared state (``signer.storage``), used by
every worker and replica. It is recorded in one transaction *before* the token signs, so
two different payloads at one version can never both be signed, even by two workers (or
replicas) at the same instant. If the
signature is then not released (token fault, audit down), the version stays taken:
retrying the same bytes still works.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from securesystemslib.formats import encode_canonical

from signer.errors import InvalidArgument, PermissionDenied, shown
from signer.identity import Principal
from signer.payload import NotJson, parse_payload
from signer.policy import Operation, Policy
from signer.policy.metadata import (
    TOP_LEVEL_ROLES,
    TufPayload,
    VersionStore,
    expected_type,
    max_expiry_days,
)
from signer.policy.notary import NotaryDialectRules, parse_notary
from signer.registry import KeyRecord
from signer.storage.records import VersionClaim

# Defined in signer.policy.metadata (shared with notary's dialect); imported from here too.
__all__ = [
    "TOP_LEVEL_ROLES",
    "TufPayload",
    "TufRules",
    "VersionStore",
    "expected_type",
    "max_expiry_days",
    "parse_tuf",
    "tuf_fields",
]

_TUF_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def parse_tuf(payload: bytes) -> dict[str, Any] | None:
    """The parsed ``signed`` object if ``payload`` is canonical TUF metadata, else None.

    None (raw signing) for bytes that are not a JSON object, or not exactly the canonical
    encoding of one with a ``_type``. JSON that no reader should be trusted to read alike
    (invalid UTF-8, lone surrogates, duplicate keys, NaN, huge integers, deep nesting)
    raises InvalidArgument (see ``signer.payload``).

    Do not modify the result: it is cached, as each request is classified before it is
    authorised and checked after (two parses of a large targets file otherwise).
    """
    if payload[:1] != b"{":
        return None
    return _parse_tuf(payload)


@lru_cache(maxsize=4)
def _parse_tuf(payload: bytes) -> dict[str, Any] | None:
    try:
        parsed = parse_payload(payload)
    except NotJson:
        return None
    if "_type" not in parsed:
        return None
    try:
        canonical = encode_canonical(parsed)
    except Exception:  # floats and other values canonical JSON cannot hold
        return None
    if not isinstance(canonical, str) or canonical.encode("utf-8") != payload:
        return None
    return parsed


def tuf_fields(parsed: dict[str, Any]) -> TufPayload:
    kind = parsed.get("_type")
    if not isinstance(kind, str):
        raise InvalidArgument("TUF payload: _type must be a string")
    version = parsed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**63:
        raise InvalidArgument(
            f"TUF payload: version must be an integer from 1 to 2**63-1, not {_brief(version)}"
        )
    expires = parsed.get("expires")
    if not isinstance(expires, str):
        raise InvalidArgument("TUF payload: expires is missing")
    # strptime alone also takes one-digit fields ("2030-1-1T0:0:0Z") and non-ASCII digits.
    if not _TUF_DATE.fullmatch(expires):
        raise InvalidArgument(
            f"TUF payload: expires {shown(expires)} is not a TUF date (YYYY-MM-DDTHH:MM:SSZ)"
        )
    try:
        when = dt.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise InvalidArgument(
            f"TUF payload: expires {shown(expires)} is not a TUF date (YYYY-MM-DDTHH:MM:SSZ)"
        ) from None
    return TufPayload(kind, version, when, expires)


def _brief(value: Any) -> str:
    """``repr(value)``, cut to 64 characters: client input quoted in a message."""
    text = repr(value)
    return text if len(text) <= 64 else text[:64] + f"... ({len(text)} characters)"


def _check_hint(key: KeyRecord, item: Any) -> None:
    """Standard TUF metadata is signed for the key's own role: a hint may only repeat it."""
    role = getattr(item, "role", "")
    if role and role != key.role:
        raise PermissionDenied(
            f"key {key.key_id} is bound to role {key.role!r}; a role hint ({shown(role)}) "
            "naming another role is for notary metadata only"
        )


class TufRules:
    """The SignGuard enforcing the rules above (see ``signer.pipeline.guards.SignGuard``)."""

    def __init__(self, versions: VersionStore, clock: Any = None) -> None:
        self.versions = versions
        self._now = clock or (lambda: dt.datetime.now(dt.UTC))
        self.notary = NotaryDialectRules(versions, clock)

    def operation(self, key: KeyRecord, item: Any) -> Operation:
        if item.payload is None:
            return Operation.SIGN_RAW
        if parse_notary(item.payload) is not None or parse_tuf(item.payload) is not None:
            return Operation.SIGN
        return Operation.SIGN_RAW

    def check(self, principal: Principal, key: KeyRecord, item: Any, policy: Policy) -> None:
        if item.payload is None:
            return
        notary = parse_notary(item.payload)
        if notary is not None:
            self.notary.check(principal, key, item, notary, policy)
            return
        parsed = parse_tuf(item.payload)
        if parsed is None:
            return  # raw signing: authorised as sign-raw already
        _check_hint(key, item)
        payload = self.inspect(key, parsed, policy)
        digest = hashlib.sha256(item.payload).hexdigest()
        self.versions.claim(key, payload, digest, principal.name)

    def check_many(
        self, entries: Sequence[tuple[Principal, KeyRecord, Any, Policy]]
    ) -> list[Exception | None]:
        """``check`` for the items of a group, their version claims made together (one
        round trip for PostgreSQL rather than one each): each item's error, or None."""
        answers: list[Exception | None] = [None] * len(entries)
        noted: list[tuple[int, VersionClaim]] = []
        for n, (principal, key, item, policy) in enumerate(entries):
            try:
                with self.versions.collecting() as claims:
                    self.check(principal, key, item, policy)
            except Exception as exc:  # the pipeline words it, as for ``check``
                answers[n] = exc
                continue
            noted.extend((n, claim) for claim in claims)
        made = self.versions.claim_all([claim for _, claim in noted])
        for (n, _), refused in zip(noted, made, strict=True):
            answers[n] = answers[n] or refused
        return answers

    def inspect(self, key: KeyRecord, parsed: dict[str, Any], policy: Policy) -> TufPayload:
        """Role and expiry checks, without touching the version state."""
        payload = tuf_fields(parsed)
        want = expected_type(key.role)
        if payload.type != want:
            raise PermissionDenied(
                f"key {key.key_id} is bound to role {key.role!r} and signs only {want!r} "
                f"metadata; this payload is {payload.type!r} metadata"
            )
        limit = max_expiry_days(policy, key.role)
        if limit is not None:
            ahead = (payload.expires - self._now()).total_seconds() / 86400
            if ahead > limit:
                raise PermissionDenied(
                    f"expires {payload.expires_text} is {ahead:.1f} days ahead; {key.role} "
                    f"metadata may expire at most {limit:g} days ahead"
                )
        return payload

    def inspect_request(self, key: KeyRecord, item: Any, policy: Policy) -> None:
        """For a quorum request: refuse early what could never be signed later."""
        if item.payload is None:
            return
        notary = parse_notary(item.payload)
        if notary is not None:
            self.notary.inspect_request(key, item, notary, policy)
            return
        parsed = parse_tuf(item.payload)
        if parsed is None:
            return
        _check_hint(key, item)
        payload = self.inspect(key, parsed, policy)
        last = self.versions.last(key.key_id, key.role)
        if last is not None and payload.version < last[0]:
            raise PermissionDenied(
                f"{key.role} version {payload.version} is lower than version {last[0]}, "
                f"already signed with key {key.key_id}: versions never go back",
                reason="VERSION_ROLLBACK",
            )
        digest = hashlib.sha256(item.payload).hexdigest()
        if last is not None and payload.version == last[0] and digest != last[1]:
            raise PermissionDenied(
                f"{key.role} version {payload.version} was already signed with key "
                f"{key.key_id} for different bytes: bump the version",
                reason="VERSION_ALREADY_SIGNED",
            )

    def signed(self, principal: Principal, key: KeyRecord, item: Any) -> None:
        return None
