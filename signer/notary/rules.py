"""The payload guard for notary-signer's API: notary's TUF dialect.

notary-server sends the canonical JSON of a role's ``signed`` object, whose ``_type`` is
the role name capitalised ("Timestamp", "Snapshot"). Such content needs the plain
``sign`` grant of the key's role; anything else needs ``sign-raw``. Standard TUF spelling
("timestamp") needs ``sign-raw`` too: otherwise the notary API would sign v1-style TUF
metadata past the v1 version and expiry rules. JSON that readers would disagree on
(duplicate keys, lone surrogates, absurd nesting) is refused outright.

The policy's ``max_expiry_days`` for the key's role applies here as on signer_api.v1
(``signer.policy.notary.check_expiry``); the version rule does not: notary-server owns
the timestamp and snapshot version lines, and after a failed write it signs the same
version again with new content (a fork the signer_api.v1 rules would refuse).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from signer.errors import PermissionDenied
from signer.identity import Principal
from signer.payload import NotJson, parse_payload
from signer.pipeline.guards import SignInput
from signer.policy import Operation, Policy
from signer.policy.notary import check_expiry, parse_go_time
from signer.policy.tuf import TufPayload
from signer.registry import KeyRecord

DIALECT = "notary"


def signing_operation(content: bytes, role: str) -> Operation:
    """``sign`` for notary metadata of the key's own role, ``sign-raw`` for anything else.

    Raises InvalidArgument for JSON that must not be signed at all (see the module doc).
    """
    return Operation.SIGN if _metadata(content, role) is not None else Operation.SIGN_RAW


def _metadata(content: bytes, role: str) -> dict[str, Any] | None:
    """The parsed content if it is notary metadata of ``role``, else None."""
    if content[:1] != b"{":
        return None
    try:
        parsed = parse_payload(content)
    except NotJson:
        return None
    kind = parsed.get("_type")
    return parsed if isinstance(kind, str) and kind == role.capitalize() else None


class NotaryRules:
    """SignGuard for the notary dialect (wrap in ``ForDialect(DIALECT, ...)``)."""

    def __init__(self, clock: Any = None) -> None:
        self._now = clock or (lambda: dt.datetime.now(dt.UTC))

    def operation(self, key: KeyRecord, item: SignInput) -> Operation:
        if item.payload is None:
            return Operation.SIGN_RAW
        return signing_operation(item.payload, key.role)

    def check(self, principal: Principal, key: KeyRecord, item: SignInput, policy: Policy) -> None:
        if key.quorum:
            raise PermissionDenied(
                f"key {key.key_id} is a quorum key and does not sign through the notary API"
            )
        parsed = _metadata(item.payload, key.role) if item.payload is not None else None
        expires = parsed.get("expires") if parsed is not None else None
        if isinstance(expires, str):  # versions are notary-server's own business here
            payload = TufPayload(key.role, 0, parse_go_time(expires), expires)
            check_expiry(policy, key.role, payload, self._now())

    def signed(self, principal: Principal, key: KeyRecord, item: SignInput) -> None:
        return None
