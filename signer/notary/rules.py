"""The payload guard for notary-signer's API: notary's TUF dialect.

notary-server sends the canonical JSON of a role's ``signed`` object, whose ``_type`` is
the role name capitalised ("Timestamp", "Snapshot"). Such content needs the plain
``sign`` grant of the key's role; anything else needs ``sign-raw``. Standard TUF spelling
("timestamp") needs ``sign-raw`` too: otherwise the notary API would sign v1-style TUF
metadata past the v1 version and expiry rules. JSON that readers would disagree on
(duplicate keys, lone surrogates, absurd nesting) is refused outright.
"""

from __future__ import annotations

from signer.errors import PermissionDenied
from signer.identity import Principal
from signer.payload import NotJson, parse_payload
from signer.pipeline.guards import SignInput
from signer.policy import Operation, Policy
from signer.registry import KeyRecord

DIALECT = "notary"


def signing_operation(content: bytes, role: str) -> Operation:
    """``sign`` for notary metadata of the key's own role, ``sign-raw`` for anything else.

    Raises InvalidArgument for JSON that must not be signed at all (see the module doc).
    """
    if content[:1] != b"{":
        return Operation.SIGN_RAW
    try:
        parsed = parse_payload(content)
    except NotJson:
        return Operation.SIGN_RAW
    kind = parsed.get("_type")
    if isinstance(kind, str) and kind == role.capitalize():
        return Operation.SIGN
    return Operation.SIGN_RAW


class NotaryRules:
    """SignGuard for the notary dialect (wrap in ``ForDialect(DIALECT, ...)``)."""

    def operation(self, key: KeyRecord, item: SignInput) -> Operation:
        if item.payload is None:
            return Operation.SIGN_RAW
        return signing_operation(item.payload, key.role)

    def check(self, principal: Principal, key: KeyRecord, item: SignInput, policy: Policy) -> None:
        if key.quorum:
            raise PermissionDenied(
                f"key {key.key_id} is a quorum key and does not sign through the notary API"
            )

    def signed(self, principal: Principal, key: KeyRecord, item: SignInput) -> None:
        return None
