"""Signing: check the request, sign inside the token, audit, and only then answer.

The order is the security argument: nothing reaches the token before the key is known,
active and the principal authorised (and, where configured, the payload passes the TUF
rules); no signature leaves before its audit entry is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from signer.audit import AuditEvent, AuditLog, Outcome
from signer.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    SignerError,
)
from signer.identity import Principal
from signer.keys import AUDIT_ROLE, record_failure, resource_of
from signer.policy import Operation, Policy, Resource
from signer.policy.ratelimit import rate_limiter_of
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.token import SignItem, Token

if TYPE_CHECKING:
    from signer.quorum import QuorumService

log = logging.getLogger(__name__)


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

    ``operation`` says which permission the request needs (SIGN for a TUF payload,
    SIGN_RAW otherwise) from the request alone, reading no state, so that the policy is
    asked before a guard reveals anything (a version, a request's state). ``check`` runs
    after authorisation and raises a SignerError to refuse; it may record state (the
    version being signed) because the signature follows. ``signed`` is told once the
    signature has been audited and released.
    """

    def operation(self, key: KeyRecord, item: SignInput) -> Operation: ...

    def check(
        self, principal: Principal, key: KeyRecord, item: SignInput, policy: Policy
    ) -> None: ...

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
        self.quorum: QuorumService | None = None  # set by the app: the quorum RPCs' core

    def sign(self, principal: Principal, item: SignInput) -> Signed:
        result = self.sign_batch(principal, [item])[0]
        if isinstance(result, SignerError):
            raise result
        return result

    def sign_batch(
        self, principal: Principal, items: Sequence[SignInput]
    ) -> list[Signed | SignerError]:
        """Sign each item; per-item errors are returned, never raised.

        Raises AuditUnavailable (or a token fault), in which case nothing is returned, or
        ResourceExhausted when the principal is over its rate limit (nothing is signed).
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
        policy = self.policy  # one policy for the whole batch, even across a reload
        self._rate_limit(policy, principal, items)
        prepared: list[_Prepared] = []
        for index, item in enumerate(items):
            try:
                try:
                    prepared.append(self._prepare(policy, principal, index, item))
                except SignerError:
                    raise
                except Exception as unexpected:  # a bug must cost one item, not the batch
                    log.exception("unexpected error checking a sign request")
                    raise ServiceError(
                        "internal error checking this item; see the daemon's log"
                    ) from unexpected
            except SignerError as exc:
                batch.results[index] = exc
                digest = hashlib.sha256(item.payload).hexdigest() if item.payload else ""
                record_failure(
                    self.audit,
                    principal,
                    "sign",
                    self._resource(item.key_id),
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
                try:  # the signature is audited: bookkeeping must not withhold it
                    guard.signed(batch.principal, p.key, p.item)
                except Exception:
                    log.exception("after signing with key %s", p.key.key_id)
            alg = p.key.algorithm
            batch.results[p.index] = Signed(
                p.key.key_id, alg.encode_signature(signature), alg.scheme, seq
            )
        return [r for r in batch.results if r is not None]

    def _resource(self, key_id: str) -> Resource:
        """The key's role and repository for the audit entry of a refusal, if it exists."""
        try:
            return resource_of(self.registry.get(key_id)) if key_id else Resource()
        except SignerError:
            return Resource(key_id)

    def _rate_limit(self, policy: Policy, principal: Principal, items: Sequence[SignInput]) -> None:
        """Every item counts; a refused batch is audited once, not once per item."""
        limiter = rate_limiter_of(policy)
        if limiter is None:
            return
        try:
            limiter.take(principal.name, max(1, len(items)))
        except ResourceExhausted as exc:
            key_ids = {item.key_id for item in items}
            key_id = key_ids.pop() if len(key_ids) == 1 else ""
            payload = items[0].payload if len(items) == 1 else None
            digest = hashlib.sha256(payload).hexdigest() if payload else ""
            record_failure(self.audit, principal, "sign", self._resource(key_id), exc, digest)
            raise

    def _prepare(
        self, policy: Policy, principal: Principal, index: int, item: SignInput
    ) -> _Prepared:
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
            operation = max(operation, guard.operation(key, item), key=_strictness)
        # Authorise first: a principal who may not sign learns nothing from the guards.
        policy.authorize(principal, operation, resource_of(key))
        if key.state is not KeyState.ACTIVE:
            raise FailedPrecondition(f"key {key.key_id} is {key.state.value} and no longer signs")
        if key.role == AUDIT_ROLE:
            raise PermissionDenied(f"key {key.key_id} is the audit key: it signs only checkpoints")
        for guard in self.guards:  # in order: the last one may record state (TUF versions)
            guard.check(principal, key, item, policy)
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
