"""What standard TUF metadata and notary's dialect share: the checked fields of a
payload, the ``_type`` a role signs, the policy's expiry limit for a role, and the store
of the last version each key signed.

Apart from ``signer.policy.tuf`` (standard TUF) and ``signer.policy.notary`` (notary's
dialect) so that both build on it and neither imports the other's module back:
``tuf`` hands notary payloads to ``notary``, which needs only what is here.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from signer.errors import PermissionDenied, SignerError
from signer.policy import Policy, tuf_limits_of
from signer.registry import KeyRecord
from signer.storage.interfaces import VersionClaims
from signer.storage.records import VersionClaim

TOP_LEVEL_ROLES = frozenset({"root", "targets", "snapshot", "timestamp"})


@dataclass(frozen=True)
class TufPayload:
    type: str
    version: int
    expires: dt.datetime
    expires_text: str


def expected_type(role: str) -> str:
    """The ``_type`` a key bound to ``role`` signs: its own for top-level roles."""
    return role if role in TOP_LEVEL_ROLES else "targets"


def max_expiry_days(policy: Policy, role: str) -> float | None:
    """The role's own limit, else a matching glob (``targets/*``), else its _type's."""
    limits = tuf_limits_of(policy).max_expiry_days
    if role in limits:
        return limits[role]
    for pattern, days in limits.items():
        if any(c in pattern for c in "*?[") and fnmatchcase(role, pattern):
            return days
    return limits.get(expected_type(role))


_COLLECTING: contextvars.ContextVar[list[VersionClaim] | None] = contextvars.ContextVar(
    "collecting_claims", default=None
)


def _refusal(claim: VersionClaim, latest: tuple[int, str]) -> PermissionDenied:
    """Why ``claim`` is refused by the ``latest`` (version, sha256) the store holds."""
    if claim.version < latest[0]:
        return PermissionDenied(
            f"{claim.role} version {claim.version} is lower than version {latest[0]}, "
            f"already signed with key {claim.key_id}: versions never go back",
            reason="VERSION_ROLLBACK",
        )
    return PermissionDenied(
        f"{claim.role} version {claim.version} was already signed with key "
        f"{claim.key_id} for different content; a new payload needs a new "
        "version",
        reason="VERSION_ALREADY_SIGNED",
    )


class VersionStore:
    """The last version each key signed for its role, in a ``VersionClaims`` store shared
    by every worker and replica (the claim is one transaction there).

    A store that cannot be read or written (the disk is full, the database is down)
    raises StorageUnavailable (UNAVAILABLE, naming the cause): nothing is signed. Inline
    on the event loop, a claim that would wait for another process raises WouldBlock
    before writing (see ``signer.storage.sqlite.Database``). A path opens the SQLite
    store there (one host's ``tuf.db``).
    """

    def __init__(self, store: VersionClaims | Path) -> None:
        if isinstance(store, Path):
            from signer.storage.sqlite.versions import SqliteVersions

            store = SqliteVersions(store)
        self._store = store

    def close(self) -> None:
        self._store.close()

    def claim(
        self,
        key: KeyRecord,
        payload: TufPayload,
        payload_sha256: str,
        principal: str,
        role: str = "",
    ) -> None:
        """Record ``payload`` as the latest version the key signed for ``role`` (default:
        its own), or refuse a rollback/fork."""
        role = role or key.role
        claim = VersionClaim(
            key.key_id, role, payload.version, payload_sha256, payload.expires_text, principal
        )
        collected = _COLLECTING.get()
        if collected is not None:  # inside ``collecting``: made later, with the others
            collected.append(claim)
            return
        refused = self._store.claim(claim, time.time())
        if refused is not None:
            raise _refusal(claim, refused)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[VersionClaim]]:
        """Within it (this thread), ``claim`` only notes its claim in the list yielded,
        for ``claim_all`` to make with the claims of other items."""
        collected: list[VersionClaim] = []
        token = _COLLECTING.set(collected)
        try:
            yield collected
        finally:
            _COLLECTING.reset(token)

    def claim_all(self, claims: Sequence[VersionClaim]) -> list[SignerError | None]:
        """Make noted claims together (one round trip for PostgreSQL): each one's refusal
        (as ``claim`` raises it), or None; a store fault is every claim's answer."""
        if not claims:
            return []
        try:
            answers = self._store.claim_many(claims, time.time())
        except SignerError as exc:
            return [exc] * len(claims)
        return [
            None if refused is None else _refusal(claim, refused)
            for claim, refused in zip(claims, answers, strict=True)
        ]

    def last(self, key_id: str, role: str) -> tuple[int, str] | None:
        return self._store.last(key_id, role)
