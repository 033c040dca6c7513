"""What the pipeline signs, and the payload guards it asks before the token is touched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from signer.identity import Principal
from signer.policy import Operation, Policy
from signer.registry import KeyRecord


class SignInput(NamedTuple):  # a tuple: made per item, 2x cheaper than a frozen dataclass
    """One thing to sign: a payload, or (raw signing) a pre-computed digest.

    ``dialect`` names the API the payload came through: ``"tuf"`` for signer_api.v1 (standard
    TUF metadata), ``"notary"`` for notary-signer's API (notary's TUF dialect). Guards
    apply the rules of their own dialect only. ``role`` is the client's role hint
    (``SignRequest.role``): which role's metadata the payload is.
    """

    key_id: str
    payload: bytes | None = None
    digest: bytes | None = None
    request_id: str = ""
    dialect: str = "tuf"
    detail: str = ""  # for the audit entry (e.g. the notary key ID)
    role: str = ""  # the metadata role the payload is for; empty: the key's own role


class Signed(NamedTuple):  # a tuple: made per item, 4x cheaper than a frozen dataclass
    key_id: str
    signature: bytes  # the algorithm's wire encoding (hex DER for ECDSA, raw otherwise)
    raw: bytes  # what the token returned (raw r||s for ECDSA)
    scheme: str
    audit_seq: int = 0


class SignGuard(Protocol):
    """A payload rule applied to each item after authorisation, before the token.

    ``operation`` says which permission the item needs (SIGN for a payload the guard
    understands, SIGN_RAW otherwise) from the request alone, reading no state, so the
    policy is asked before a guard reveals anything (a version, a request's state); the
    guards are asked in turn only until one says SIGN_RAW (nothing is stricter).
    ``check`` raises a SignerError to refuse; it may record state (the version being
    signed) because the signature follows. ``signed`` is told once the signature has been
    audited and released.
    """

    def operation(self, key: KeyRecord, item: SignInput) -> Operation: ...

    def check(
        self, principal: Principal, key: KeyRecord, item: SignInput, policy: Policy
    ) -> None: ...

    def signed(self, principal: Principal, key: KeyRecord, item: SignInput) -> None: ...


# What a guard is handed for each item of a group: the principal, the key, the item and
# the policy of its request.
GuardEntry = tuple[Principal, KeyRecord, SignInput, Policy]


def check_each(guard: SignGuard, entries: Sequence[GuardEntry]) -> list[Exception | None]:
    """``guard.check`` for each entry: the exception it raised, or None. A guard with a
    ``check_many`` (one that records state, e.g. the TUF version claims) checks the
    group at once, in fewer round trips."""
    many = getattr(guard, "check_many", None)
    if many is not None:
        answers: list[Exception | None] = many(entries)
        return answers
    out: list[Exception | None] = []
    for principal, key, item, policy in entries:
        try:
            guard.check(principal, key, item, policy)
        except Exception as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


def stricter(a: Operation, b: Operation) -> Operation:
    """SIGN_RAW needs the stronger grant: a guard may raise SIGN to SIGN_RAW, never lower it."""
    return Operation.SIGN_RAW if Operation.SIGN_RAW in (a, b) else a


class ForDialect:
    """Apply ``guard`` only to items of one dialect (the TUF rules to signer_api.v1 payloads)."""

    def __init__(self, dialect: str, guard: SignGuard) -> None:
        self.dialect = dialect
        self.guard = guard

    def operation(self, key: KeyRecord, item: SignInput) -> Operation:
        if item.dialect != self.dialect:
            return Operation.SIGN
        return self.guard.operation(key, item)

    def check(self, principal: Principal, key: KeyRecord, item: SignInput, policy: Policy) -> None:
        if item.dialect == self.dialect:
            self.guard.check(principal, key, item, policy)

    def check_many(self, entries: Sequence[GuardEntry]) -> list[Exception | None]:
        answers: list[Exception | None] = [None] * len(entries)
        mine = [n for n, entry in enumerate(entries) if entry[2].dialect == self.dialect]
        for n, answer in zip(mine, check_each(self.guard, [entries[n] for n in mine]), strict=True):
            answers[n] = answer
        return answers

    def signed(self, principal: Principal, key: KeyRecord, item: SignInput) -> None:
        if item.dialect == self.dialect:
            self.guard.signed(principal, key, item)
