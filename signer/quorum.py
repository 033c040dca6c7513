"""Quorum signing: a quorum key signs only a payload that M distinct approvers approved.

The flow is RequestSignature -> Approve (x M) -> Sign(request_id). The requester can
never approve their own request; each approver names the sha256 of the payload they
approve, so an approval covers exactly those bytes. A request is open for the policy's
window; after that it is expired and nothing more happens to it. Requests live in
SQLite (shared by the worker processes); approvals are read-modify-write under
BEGIN IMMEDIATE.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from signer.audit import AuditEvent, AuditLog, Outcome
from signer.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SignerError,
)
from signer.identity import Principal
from signer.keys import AUDIT_ROLE, record_failure, resource_of
from signer.policy import Operation, Policy, Resource, quorum_of
from signer.policy.ratelimit import rate_limiter_of
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.storage.sqlite import connect

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS signature_requests (
        request_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        payload_sha256 TEXT NOT NULL,
        requester TEXT NOT NULL,
        reason TEXT NOT NULL,
        approvals_required INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        fulfilled_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS approvals (
        request_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (request_id, approver)
    )""",
]


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    FULFILLED = "fulfilled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SignatureRequest:
    request_id: str
    key_id: str
    payload: bytes
    payload_sha256: str
    requester: str
    reason: str
    approvals_required: int
    state: RequestState
    created_at: float
    expires_at: float
    approvers: tuple[str, ...] = ()


class QuorumStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._conn = connect(path)
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._lock = threading.Lock()
        self.clock = clock

    def close(self) -> None:
        self._conn.close()

    def add(self, request: SignatureRequest) -> SignatureRequest:
        with self._lock:
            self._conn.execute(
                "INSERT INTO signature_requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    request.request_id,
                    request.key_id,
                    request.payload,
                    request.payload_sha256,
                    request.requester,
                    request.reason,
                    request.approvals_required,
                    request.state.value,
                    request.created_at,
                    request.expires_at,
                ),
            )
        return request

    def get(self, request_id: str) -> SignatureRequest:
        with self._lock:
            return self._get(request_id)

    def approve(
        self, request_id: str, approver: str, check: Callable[[SignatureRequest], None]
    ) -> SignatureRequest:
        """Add ``approver`` after ``check`` accepted the current request; one transaction.

        ``check`` runs inside the transaction: if it raises (a refusal, or the audit log
        cannot be written), nothing is approved.
        """
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                request = self._get(request_id)
                if approver in request.approvers:
                    raise AlreadyExists(f"{approver} has already approved request {request_id}")
                check(request)  # last: it may write the audit entry (then commit or nothing)
                conn.execute(
                    "INSERT INTO approvals VALUES (?, ?, ?)", (request_id, approver, self.clock())
                )
                if len(request.approvers) + 1 >= request.approvals_required:
                    conn.execute(
                        "UPDATE signature_requests SET state = ? WHERE request_id = ?",
                        (RequestState.APPROVED.value, request_id),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return self._get(request_id)

    def claim(self, request_id: str) -> bool:
        """Atomically take an approved, unexpired request for signing: true for one caller only.

        Taken before the token signs, so concurrent Sign calls (any worker) cannot both use
        one approval. If signing then fails, the request stays used: request again.
        """
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE signature_requests SET state = ?, fulfilled_at = ? "
                "WHERE request_id = ? AND state = ? AND expires_at >= ?",
                (
                    RequestState.FULFILLED.value,
                    self.clock(),
                    request_id,
                    RequestState.APPROVED.value,
                    self.clock(),
                ),
            )
            return cursor.rowcount == 1

    def fulfil(self, request_id: str) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE signature_requests SET state = ?, fulfilled_at = ? "
                "WHERE request_id = ? AND state IN (?, ?)",
                (
                    RequestState.FULFILLED.value,
                    self.clock(),
                    request_id,
                    RequestState.APPROVED.value,
                    RequestState.FULFILLED.value,
                ),
            )

    def _get(self, request_id: str) -> SignatureRequest:
        row = self._conn.execute(
            "SELECT request_id, key_id, payload, payload_sha256, requester, reason, "
            "approvals_required, state, created_at, expires_at "
            "FROM signature_requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no signature request {request_id!r}")
        approvers = tuple(
            r[0]
            for r in self._conn.execute(
                "SELECT approver FROM approvals WHERE request_id = ? ORDER BY time, approver",
                (request_id,),
            )
        )
        request = SignatureRequest(
            row[0],
            row[1],
            bytes(row[2]),
            row[3],
            row[4],
            row[5],
            int(row[6]),
            RequestState(row[7]),
            float(row[8]),
            float(row[9]),
            approvers,
        )
        if request.state in (RequestState.PENDING, RequestState.APPROVED) and (
            self.clock() > request.expires_at
        ):
            request = replace(request, state=RequestState.EXPIRED)
        return request


class QuorumService:
    """The core of the three quorum RPCs: authorised, rate limited and audited."""

    def __init__(
        self,
        store: QuorumStore,
        registry: KeyRegistry,
        audit: AuditLog,
        current_policy: Callable[[], Policy],
        guards: Sequence[Any] = (),
        max_payload_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.max_payload_bytes = max_payload_bytes  # approvers never review the unsignable
        self.store = store
        self.registry = registry
        self.audit = audit
        self.current_policy = current_policy
        self.guards = list(guards)  # SignGuards: for the permission a payload needs

    def request(
        self, principal: Principal, key_id: str, payload: bytes, reason: str = ""
    ) -> SignatureRequest:
        policy = self.current_policy()
        digest = hashlib.sha256(payload).hexdigest() if payload else ""
        resource = Resource(key_id)
        try:
            self._rate_limit(policy, principal)
            if not key_id:
                raise InvalidArgument("key_id is required")
            if not payload:
                raise InvalidArgument("payload is empty")
            if len(payload) > self.max_payload_bytes:
                raise InvalidArgument(
                    f"payload is {len(payload)} bytes; the limit is {self.max_payload_bytes}"
                )
            if len(reason) > 1000:
                raise InvalidArgument("reason is limited to 1000 characters")
            key = self.registry.get(key_id)
            resource = resource_of(key)
            from signer.signing import SignInput  # the guards' item type

            item = SignInput(key_id, payload=payload)
            operation = Operation.SIGN
            for guard in self.guards:
                if guard.operation(key, item) is Operation.SIGN_RAW:
                    operation = Operation.SIGN_RAW
            policy.authorize(principal, operation, resource)
            self._usable(key)
            if not key.quorum:
                raise FailedPrecondition(f"key {key_id} is not a quorum key: sign with it directly")
            for guard in self.guards:  # role and expiry now, so approvers see a signable payload
                inspect = getattr(guard, "inspect_request", None)
                if inspect is not None:
                    inspect(key, item, policy)
            settings = quorum_of(policy)
            now = self.store.clock()
            request = SignatureRequest(
                request_id=secrets.token_hex(16),
                key_id=key_id,
                payload=payload,
                payload_sha256=digest,
                requester=principal.name,
                reason=reason,
                approvals_required=settings.approvals,
                state=RequestState.PENDING,
                created_at=now,
                expires_at=now + settings.window_seconds,
            )
            # Fail closed: the request exists only once its audit entry is written.
            self._audit(principal, "request-signature", key, request)
            self.store.add(request)
        except SignerError as exc:
            record_failure(self.audit, principal, "request-signature", resource, exc, digest)
            raise
        return request

    def approve(
        self, principal: Principal, request_id: str, payload_sha256: str
    ) -> SignatureRequest:
        policy = self.current_policy()
        resource = Resource()
        digest = ""
        try:
            self._rate_limit(policy, principal)
            if not request_id:
                raise InvalidArgument("request_id is required")
            if not payload_sha256:
                raise InvalidArgument("payload_sha256 is required: approve what you have seen")
            request = self.store.get(request_id)
            digest = request.payload_sha256
            key = self.registry.get(request.key_id)
            resource = resource_of(key)
            policy.authorize(principal, Operation.APPROVE, resource)

            def check(current: SignatureRequest) -> None:
                if current.requester == principal.name:
                    raise PermissionDenied(
                        f"{principal.name} requested signature request {request_id} and may "
                        "not approve it: approvals must come from someone else"
                    )
                if payload_sha256.lower() != current.payload_sha256:
                    raise FailedPrecondition(
                        f"payload_sha256 {payload_sha256} does not match the payload of request "
                        f"{request_id} (sha256 {current.payload_sha256}); nothing was approved"
                    )
                refuse_if_closed(current)
                # Fail closed: the approval counts only if its audit entry is written first.
                approvals = len(current.approvers) + 1
                state = (
                    RequestState.APPROVED
                    if approvals >= current.approvals_required
                    else RequestState.PENDING
                )
                self._audit(
                    principal,
                    "approve",
                    key,
                    replace(current, approvers=(*current.approvers, principal.name), state=state),
                )

            request = self.store.approve(request_id, principal.name, check)
        except SignerError as exc:
            record_failure(self.audit, principal, "approve", resource, exc, digest, request_id)
            raise
        return request

    def get(self, principal: Principal, request_id: str) -> SignatureRequest:
        """The requester and anyone who may read or approve for the key may look."""
        policy = self.current_policy()
        resource = Resource()
        try:
            self._rate_limit(policy, principal)
            if not request_id:
                raise InvalidArgument("request_id is required")
            request = self.store.get(request_id)
            key = self.registry.get(request.key_id)
            resource = resource_of(key)
            if request.requester != principal.name:
                try:
                    policy.authorize(principal, Operation.APPROVE, resource)
                except PermissionDenied:
                    policy.authorize(principal, Operation.READ, resource)
        except SignerError as exc:
            record_failure(self.audit, principal, "get-request", resource, exc, "", request_id)
            raise
        self._audit(principal, "get-request", key, request)
        return request

    def _rate_limit(self, policy: Policy, principal: Principal) -> None:
        limiter = rate_limiter_of(policy)
        if limiter is not None:
            limiter.take(principal.name)

    @staticmethod
    def _usable(key: KeyRecord) -> None:
        if key.state is not KeyState.ACTIVE:
            raise FailedPrecondition(f"key {key.key_id} is {key.state.value} and no longer signs")
        if key.role == AUDIT_ROLE:
            raise PermissionDenied(f"key {key.key_id} is the audit key: it signs only checkpoints")

    def _audit(
        self, principal: Principal, operation: str, key: KeyRecord, request: SignatureRequest
    ) -> None:
        self.audit.record(
            AuditEvent(
                principal.name,
                operation,
                Outcome.ALLOWED,
                key.key_id,
                key.role,
                key.repository,
                request.payload_sha256,
                detail=f"state {request.state.value}, "
                f"{len(request.approvers)}/{request.approvals_required} approvals",
                request_id=request.request_id,
            )
        )


def refuse_if_closed(request: SignatureRequest) -> None:
    """An expired or already fulfilled request can be neither approved nor signed."""
    if request.state is RequestState.EXPIRED:
        raise FailedPrecondition(f"signature request {request.request_id} has expired")
    if request.state is RequestState.FULFILLED:
        raise FailedPrecondition(f"signature request {request.request_id} is already signed")


class QuorumClaim:
    """The last SignGuard for quorum keys: takes the approved request, once.

    Separate from ``QuorumGuard`` so it runs after every other check (the TUF rules):
    a request is consumed only by a signature that is about to be made.
    """

    def __init__(self, store: QuorumStore) -> None:
        self.store = store

    def operation(self, key: KeyRecord, item: Any) -> Operation:
        return Operation.SIGN

    def check(self, principal: Principal, key: KeyRecord, item: Any, policy: Policy) -> None:
        if key.quorum and item.request_id and not self.store.claim(item.request_id):
            raise FailedPrecondition(f"signature request {item.request_id} is already signed")

    def signed(self, principal: Principal, key: KeyRecord, item: Any) -> None:
        return None


class QuorumGuard:
    """The SignGuard that lets a quorum key sign only an approved request's payload."""

    def __init__(self, store: QuorumStore) -> None:
        self.store = store

    def operation(self, key: KeyRecord, item: Any) -> Operation:
        return Operation.SIGN

    def check(self, principal: Principal, key: KeyRecord, item: Any, policy: Policy) -> None:
        if not key.quorum:
            if item.request_id:
                raise InvalidArgument(
                    f"key {key.key_id} is not a quorum key: sign without request_id"
                )
            return
        if not item.request_id:
            raise FailedPrecondition(
                f"key {key.key_id} is a quorum key: request a signature (RequestSignature), "
                "collect the approvals, then Sign with its request_id"
            )
        request = self.store.get(item.request_id)
        if request.key_id != key.key_id:
            raise FailedPrecondition(
                f"signature request {request.request_id} is for another key, not {key.key_id}"
            )
        if request.requester != principal.name:
            raise PermissionDenied(
                f"only the requester of signature request {request.request_id} may sign it"
            )
        if item.payload is None or hashlib.sha256(item.payload).hexdigest() != (
            request.payload_sha256
        ):
            raise FailedPrecondition(
                f"the payload differs from the one approved in signature request "
                f"{request.request_id} (sha256 {request.payload_sha256})"
            )
        if request.state is RequestState.PENDING:
            raise FailedPrecondition(
                f"signature request {request.request_id} has {len(request.approvers)} of "
                f"{request.approvals_required} approvals"
            )
        refuse_if_closed(request)

    def signed(self, principal: Principal, key: KeyRecord, item: Any) -> None:
        if key.quorum and item.request_id:
            self.store.fulfil(item.request_id)
