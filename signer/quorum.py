"""Quorum signing: a quorum key signs only a payload that M distinct approvers approved.

The flow is RequestSignature -> Approve (x M) -> Sign(request_id). The requester can
never approve their own request; each approver names the sha256 of the payload they
approve, so an approval covers exactly those bytes. A request is open for the policy's
window; after that it is expired and nothing more happens to it. Requests live in the
shared state (``signer.storage``, used by every worker and replica); an approval and a
claim are each one transaction there.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from signer.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    shown,
)
from signer.identity import Principal
from signer.pipeline.admin import Administration
from signer.pipeline.admission import check_payload, check_usable, resource_of
from signer.pipeline.guards import SignGuard, SignInput, stricter
from signer.policy import Operation, Policy, Resource, quorum_of
from signer.registry import KeyRecord, KeyRegistry
from signer.storage.interfaces import QuorumRequests
from signer.storage.records import RequestState, SignatureRequest

__all__ = ["QuorumService", "QuorumStore", "RequestState", "SignatureRequest"]


class QuorumStore:
    """Signature requests in a ``QuorumRequests`` store (shared by workers and replicas),
    seen through this process's clock: an open request past its window is expired."""

    def __init__(self, store: QuorumRequests, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = clock

    def close(self) -> None:
        self._store.close()

    def add(self, request: SignatureRequest) -> SignatureRequest:
        self._store.add(request)
        return request

    def get(self, request_id: str) -> SignatureRequest:
        return self._view(request_id, self._store.get(request_id))

    def approve(
        self, request_id: str, approver: str, check: Callable[[SignatureRequest], None]
    ) -> SignatureRequest:
        """Add ``approver`` after ``check`` accepted the current request; one transaction.

        ``check`` runs inside the transaction: if it raises (a refusal, or the audit log
        cannot be written), nothing is approved.
        """

        def checked(found: SignatureRequest | None) -> None:
            request = self._view(request_id, found)
            if approver in request.approvers:
                raise AlreadyExists(f"{approver} has already approved request {request_id}")
            check(request)  # last: it may write the audit entry (then commit or nothing)

        approved = self._store.approve(request_id, approver, self.clock(), checked)
        return self._view(request_id, approved)

    def claim(self, request_id: str) -> bool:
        """Atomically take an approved, unexpired request for signing: true for one caller only.

        Taken before the token signs, so concurrent Sign calls (any worker, any replica)
        cannot both use one approval. If signing then fails, the request stays used:
        request again.
        """
        return self._store.claim(request_id, self.clock())

    def open_counts(self) -> dict[str, int]:
        """Unexpired requests awaiting approvals (pending) or their signature (approved)."""
        found = self._store.open_counts(self.clock())
        states = (RequestState.PENDING, RequestState.APPROVED)
        return {state.value: found.get(state.value, 0) for state in states}

    def _view(self, request_id: str, request: SignatureRequest | None) -> SignatureRequest:
        if request is None:
            raise NotFound(f"no signature request {shown(request_id)}")
        if request.state in (RequestState.PENDING, RequestState.APPROVED) and (
            self.clock() > request.expires_at
        ):
            request = replace(request, state=RequestState.EXPIRED)
        return request


class QuorumService:
    """The core of the quorum RPCs, through the pipeline's administration stages."""

    def __init__(
        self,
        store: QuorumStore,
        registry: KeyRegistry,
        admin: Administration,
        guards: Sequence[SignGuard] = (),
        max_payload_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.registry = registry
        self.admin = admin
        self.guards = tuple(guards)  # the payload guards: the permission a payload needs
        self.max_payload_bytes = max_payload_bytes  # approvers never review the unsignable

    def request(
        self, principal: Principal, key_id: str, payload: bytes, reason: str = "", role: str = ""
    ) -> SignatureRequest:
        """``role``: the metadata role the payload is for (Sign it later with the same)."""
        digest = hashlib.sha256(payload).hexdigest() if payload else ""
        with self.admin.action(
            principal,
            "request-signature",
            Resource(key_id[:256]),
            payload_sha256=digest,
            rate_limited=True,
        ) as action:
            if not key_id:
                raise InvalidArgument("key_id is required")
            check_payload(payload, self.max_payload_bytes)
            if len(reason) > 1000:
                raise InvalidArgument("reason is limited to 1000 characters")
            key = self.registry.get(key_id)
            item = SignInput(key_id, payload=payload, role=role)
            operation = Operation.SIGN
            for guard in self.guards:
                operation = stricter(operation, guard.operation(key, item))
            action.authorize(operation, resource_of(key))
            check_usable(key)
            if not key.quorum:
                raise FailedPrecondition(f"key {key_id} is not a quorum key: sign with it directly")
            for guard in self.guards:  # role and expiry now, so approvers see a signable payload
                inspect = getattr(guard, "inspect_request", None)
                if inspect is not None:
                    inspect(key, item, action.policy)
            settings = quorum_of(action.policy)
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
            action.request_id = request.request_id
            # Fail closed: the request exists only once its audit entry is written.
            action.allow(_progress(request))
            return self.store.add(request)

    def approve(
        self, principal: Principal, request_id: str, payload_sha256: str
    ) -> SignatureRequest:
        with self.admin.action(
            principal, "approve", request_id=request_id[:256], rate_limited=True
        ) as action:
            if not request_id:
                raise InvalidArgument("request_id is required")
            if not payload_sha256:
                raise InvalidArgument("payload_sha256 is required: approve what you have seen")
            request = self.store.get(request_id)
            action.payload_sha256 = request.payload_sha256
            key = self.registry.get(request.key_id)
            action.authorize(Operation.APPROVE, resource_of(key))

            def check(current: SignatureRequest) -> None:
                if current.requester == principal.name:
                    raise PermissionDenied(
                        f"{principal.name} requested signature request {request_id} and may "
                        "not approve it: approvals must come from someone else"
                    )
                if payload_sha256.lower() != current.payload_sha256:
                    raise FailedPrecondition(
                        f"payload_sha256 {shown(payload_sha256)} does not match the payload of "
                        f"request {request_id} (sha256 {current.payload_sha256}); nothing was "
                        "approved"
                    )
                refuse_if_closed(current)
                approvals = len(current.approvers) + 1
                state = (
                    RequestState.APPROVED
                    if approvals >= current.approvals_required
                    else RequestState.PENDING
                )
                # Fail closed: the approval counts only if its audit entry is written first.
                action.allow(
                    _progress(
                        replace(
                            current, approvers=(*current.approvers, principal.name), state=state
                        )
                    )
                )

            return self.store.approve(request_id, principal.name, check)

    def get(self, principal: Principal, request_id: str) -> SignatureRequest:
        """The requester and anyone who may read or approve for the key may look."""
        with self.admin.action(
            principal, "get-request", request_id=request_id[:256], rate_limited=True
        ) as action:
            if not request_id:
                raise InvalidArgument("request_id is required")
            request = self.store.get(request_id)
            key = self.registry.get(request.key_id)
            action.resource = resource_of(key)
            action.payload_sha256 = request.payload_sha256
            if request.requester != principal.name:
                try:
                    action.authorize(Operation.APPROVE)
                except PermissionDenied:
                    action.authorize(Operation.READ)
            action.detail = _progress(request)
            return request


def _progress(request: SignatureRequest) -> str:
    return (
        f"state {request.state.value}, "
        f"{len(request.approvers)}/{request.approvals_required} approvals"
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
        return None  # QuorumClaim marked the request fulfilled before the token signed
