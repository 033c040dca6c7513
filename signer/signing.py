"""Signing: check the request, sign inside the token, audit, and only then answer.

The order is the security argument: nothing reaches the token before the key is known,
active and the principal authorised (and, where configured, the payload passes the TUF
rules); no signature leaves before its audit entry is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from signer.audit import AuditEvent, AuditLog, Outcome
from signer.errors import FailedPrecondition, InvalidArgument, SignerError
from signer.identity import Principal
from signer.keys import record_failure, resource_of
from signer.policy import Operation, Policy, Resource
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.token import SignItem, Token


@dataclass(frozen=True)
class SignInput:
    """One thing to sign: a payload, or (raw signing) a pre-computed digest."""

    key_id: str
    payload: bytes | None = None
    digest: bytes | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Signed:
    key_id: str
    signature: bytes  # as securesystemslib verifies it once hex-encoded
    scheme: str
    audit_seq: int = 0


class SignGuard(Protocol):
    """A rule applied to each request before the token is touched (e.g. TUF payload rules).

    ``check`` raises a SignerError to refuse and returns the operation the request needs
    permission for (SIGN for a TUF payload, SIGN_RAW otherwise); ``signed`` is told after
    the signature is made, to record state such as the last version signed.
    """

    def check(self, principal: Principal, key: KeyRecord, item: SignInput) -> Operation: ...

    def signed(self, principal: Principal, key: KeyRecord, item: SignInput) -> None: ...


@dataclass(frozen=True)
class _Prepared:
    index: int
    key: KeyRecord
    item: SignInput
    payload_sha256: str
    tbs: bytes  # what the token signs


@dataclass
class _Batch:
    """A batch between signing in the token and committing its audit entries."""

    principal: Principal
    results: list[Signed | SignerError | None]
    signed: list[tuple[_Prepared, bytes]] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)


class SigningService:
    def __init__(
        self,
        token: Token,
        registry: KeyRegistry,
        policy: Policy,
        audit: AuditLog,
        max_payload_bytes: int,
        guards: Sequence[SignGuard] = (),
    ) -> None:
        self.token = token
        self.registry = registry
        self.policy = policy
        self.audit = audit
        self.max_payload_bytes = max_payload_bytes
        self.guards = list(guards)

    def sign(self, principal: Principal, item: SignInput) -> Signed:
        result = self.sign_batch(principal, [item])[0]
        if isinstance(result, SignerError):
            raise result
        return result

    def sign_batch(
        self, principal: Principal, items: Sequence[SignInput]
    ) -> list[Signed | SignerError]:
        """Sign each item; per-item errors are returned, never raised.

        Raises only AuditUnavailable (or a token fault), in which case nothing is returned.
        """
        batch = self.begin(principal, items)
        seqs = self.audit.record(*batch.events) if batch.events else []
        return self.complete(batch, seqs)

    async def sign_batch_async(
        self, principal: Principal, items: Sequence[SignInput]
    ) -> list[Signed | SignerError]:
        """``sign_batch`` for an asyncio server: waits for the audit commit without a thread."""
        if len(items) <= 64:  # short token work: cheaper inline than a thread hop
            batch = self.begin(principal, items)
        else:  # a batch holds the token for a while: keep the event loop free meanwhile
            batch = await asyncio.to_thread(self.begin, principal, items)
        seqs = await self.audit.record_async(*batch.events) if batch.events else []
        return self.complete(batch, seqs)

    def begin(self, principal: Principal, items: Sequence[SignInput]) -> _Batch:
        """Check every item, sign the acceptable ones in the token; nothing is released yet."""
        batch = _Batch(principal, [None] * len(items))
        prepared: list[_Prepared] = []
        for index, item in enumerate(items):
            try:
                prepared.append(self._prepare(principal, index, item))
            except SignerError as exc:
                batch.results[index] = exc
                digest = hashlib.sha256(item.payload).hexdigest() if item.payload else ""
                record_failure(
                    self.audit,
                    principal,
                    "sign",
                    Resource(item.key_id),
                    exc,
                    digest,
                    item.request_id,
                )
        if not prepared:
            return batch
        raw = self.token.sign_many(
            [SignItem(p.key.object_id, p.key.algorithm, p.tbs) for p in prepared]
        )
        for p, signature in zip(prepared, raw, strict=True):
            if isinstance(signature, SignerError):
                batch.results[p.index] = signature
                record_failure(
                    self.audit,
                    principal,
                    "sign",
                    resource_of(p.key),
                    signature,
                    p.payload_sha256,
                    p.item.request_id,
                )
                continue
            if isinstance(signature, Exception):
                raise signature
            batch.signed.append((p, signature))
            batch.events.append(
                AuditEvent(
                    principal.name,
                    "sign",
                    Outcome.ALLOWED,
                    p.key.key_id,
                    p.key.role,
                    p.key.repository,
                    p.payload_sha256,
                    request_id=p.item.request_id,
                )
            )
        return batch

    def complete(self, batch: _Batch, seqs: Sequence[int]) -> list[Signed | SignerError]:
        """After the audit entries are committed: release the signatures."""
        for (p, signature), seq in zip(batch.signed, seqs, strict=True):
            for guard in self.guards:
                guard.signed(batch.principal, p.key, p.item)
            alg = p.key.algorithm
            batch.results[p.index] = Signed(
                p.key.key_id, alg.encode_signature(signature), alg.scheme, seq
            )
        return [r for r in batch.results if r is not None]

    def _prepare(self, principal: Principal, index: int, item: SignInput) -> _Prepared:
        if not item.key_id:
            raise InvalidArgument("key_id is required")
        if item.payload is None and item.digest is None:
            raise InvalidArgument("send a payload or a digest to sign")
        if item.payload is not None and item.digest is not None:
            raise InvalidArgument("send a payload or a digest, not both")
        if item.payload is not None:
            if not item.payload:
                raise InvalidArgument("payload is empty")
            if len(item.payload) > self.max_payload_bytes:
                raise InvalidArgument(
                    f"payload is {len(item.payload)} bytes; the limit is {self.max_payload_bytes}"
                )
        key = self.registry.get(item.key_id)
        operation = Operation.SIGN if item.digest is None else Operation.SIGN_RAW
        for guard in self.guards:
            operation = max(operation, guard.check(principal, key, item), key=_strictness)
        self.policy.authorize(principal, operation, resource_of(key))
        if key.state is not KeyState.ACTIVE:
            raise FailedPrecondition(f"key {key.key_id} is {key.state.value} and no longer signs")
        alg = key.algorithm
        if item.digest is not None:
            tbs = alg.check_digest(item.digest)
            payload_sha256 = ""
        else:
            assert item.payload is not None
            tbs = alg.to_be_signed(item.payload)
            payload_sha256 = hashlib.sha256(item.payload).hexdigest()
        return _Prepared(index, key, item, payload_sha256, tbs)


def _strictness(operation: Operation) -> int:
    """SIGN_RAW needs the stronger grant: a guard may raise SIGN to SIGN_RAW, never lower it."""
    return 1 if operation is Operation.SIGN_RAW else 0
