"""Key lifecycle: create inside the token, look up, retire, destroy. Every step audited."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import TypeVar

from signer.algorithms import Algorithm, get_algorithm, public_key_pem, tuf_key, tuf_key_json
from signer.audit import AuditEvent, AuditLog, Outcome, failure_outcome
from signer.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    SignerError,
)
from signer.identity import Principal
from signer.policy import Operation, Policy, Resource
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.token import Token

T = TypeVar("T")

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/ -]{0,127}$")
_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9._/:-]{0,255}$")

AUDIT_ROLE = "audit"  # reserved: the daemon's own checkpoint key (signer.audit.checkpoint)


def resource_of(key: KeyRecord) -> Resource:
    return Resource(key.key_id, key.role, key.repository)


class KeyManager:
    def __init__(
        self, token: Token, registry: KeyRegistry, policy: Policy, audit: AuditLog
    ) -> None:
        self.token = token
        self.registry = registry
        self.policy = policy
        self.audit = audit

    def create(
        self,
        principal: Principal,
        label: str,
        algorithm_name: str,
        role: str,
        repository: str = "",
        quorum: bool = False,
    ) -> KeyRecord:
        resource = Resource("", role, repository)

        def check() -> Algorithm:
            if not _LABEL.match(label):
                raise InvalidArgument(
                    "label must be 1-128 characters: letters, digits and . _ : @ / - or space"
                )
            if not _ROLE.match(role):
                raise InvalidArgument(
                    "role must be 1-128 characters: letters, digits and . _ / - "
                    "(root, targets, snapshot, timestamp or a delegated role name)"
                )
            if role == AUDIT_ROLE:
                raise InvalidArgument(
                    "role 'audit' is reserved for the daemon's audit checkpoint key"
                )
            if not _REPOSITORY.match(repository):
                raise InvalidArgument("repository may hold letters, digits and . _ / : - only")
            algorithm = get_algorithm(algorithm_name)
            self.policy.authorize(principal, Operation.CREATE, resource)
            return algorithm

        def make(algorithm: Algorithm) -> KeyRecord:
            object_id, public = self.token.generate(algorithm, label)
            key = tuf_key(algorithm, public)
            record = KeyRecord(
                key_id=key.keyid,
                object_id=object_id,
                algorithm_name=algorithm.name,
                label=label,
                role=role,
                repository=repository,
                public_key_pem=public_key_pem(public),
                tuf_key_json=tuf_key_json(key),
                quorum=quorum,
                created_by=principal.name,
            )
            return self.registry.add(record)

        algorithm = self._run(principal, Operation.CREATE, resource, check)
        record = self._run(principal, Operation.CREATE, resource, lambda: make(algorithm))
        try:
            self._allow(principal, Operation.CREATE, resource_of(record))
        except SignerError:
            # Fail closed: a key whose creation cannot be audited does not stay.
            with contextlib.suppress(SignerError):
                self.token.destroy(record.object_id)
                self.registry.set_state(record.key_id, KeyState.DESTROYED)
            raise
        return record

    def get(self, principal: Principal, key_id: str) -> KeyRecord:
        record = self._lookup(principal, Operation.READ, key_id)
        return record

    def list(
        self, principal: Principal, role: str = "", repository: str = "", state: str = ""
    ) -> list[KeyRecord]:
        """Keys matching the filter that the principal may read; others are left out."""
        policy = self.policy
        visible = []
        for record in self.registry.find(role, repository, state):
            try:
                policy.authorize(principal, Operation.READ, resource_of(record))
            except PermissionDenied:
                continue
            visible.append(record)
        self.audit.record(
            AuditEvent(
                principal.name,
                "list",
                Outcome.ALLOWED,
                role=role,
                repository=repository,
                detail=f"{len(visible)} key(s) visible",
            )
        )
        return visible

    def retire(self, principal: Principal, key_id: str) -> KeyRecord:
        record = self._lookup(principal, Operation.RETIRE, key_id, audit_read=False)

        def check() -> None:
            if record.state is not KeyState.ACTIVE:
                raise FailedPrecondition(f"key {key_id} is {record.state.value}, not active")

        return self._audited_first(
            principal,
            Operation.RETIRE,
            resource_of(record),
            check,
            lambda: self.registry.set_state(key_id, KeyState.RETIRED),
        )

    def destroy(self, principal: Principal, key_id: str, confirm: str) -> KeyRecord:
        record = self._lookup(principal, Operation.DESTROY, key_id, audit_read=False)

        def check() -> None:
            if confirm != key_id:
                raise InvalidArgument("confirm must repeat the key_id of the key to destroy")
            if record.state is KeyState.DESTROYED:
                raise FailedPrecondition(f"key {key_id} is already destroyed")

        def act() -> KeyRecord:
            self.token.destroy(record.object_id)
            return self.registry.set_state(key_id, KeyState.DESTROYED)

        return self._audited_first(principal, Operation.DESTROY, resource_of(record), check, act)

    def _lookup(
        self, principal: Principal, operation: Operation, key_id: str, audit_read: bool = True
    ) -> KeyRecord:
        """Find a key and check the principal may perform ``operation`` on it."""

        def run() -> KeyRecord:
            if not key_id:
                raise InvalidArgument("key_id is required")
            record = self.registry.get(key_id)
            self.policy.authorize(principal, operation, resource_of(record))
            return record

        if audit_read:
            return self._audited(principal, operation, Resource(key_id), run)
        try:
            return run()
        except SignerError as exc:
            self._record_failure(principal, operation, Resource(key_id), exc)
            raise

    def _audited(
        self, principal: Principal, operation: Operation, resource: Resource, fn: Callable[[], T]
    ) -> T:
        """A read: run it, then record it (a failure is recorded as such)."""
        result = self._run(principal, operation, resource, fn)
        key_id = resource.key_id or getattr(result, "key_id", "")
        self._allow(principal, operation, Resource(key_id, resource.role, resource.repository))
        return result

    def _audited_first(
        self,
        principal: Principal,
        operation: Operation,
        resource: Resource,
        check: Callable[[], None],
        act: Callable[[], T],
    ) -> T:
        """A change: checked, then recorded (fail closed), and only then carried out."""
        self._run(principal, operation, resource, check)
        self._allow(principal, operation, resource)
        return self._run(principal, operation, resource, act)

    def _run(
        self, principal: Principal, operation: Operation, resource: Resource, fn: Callable[[], T]
    ) -> T:
        try:
            return fn()
        except SignerError as exc:
            self._record_failure(principal, operation, resource, exc)
            raise

    def _allow(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        self.audit.record(
            AuditEvent(
                principal.name,
                operation.value,
                Outcome.ALLOWED,
                resource.key_id,
                resource.role,
                resource.repository,
            )
        )

    def _record_failure(
        self, principal: Principal, operation: Operation, resource: Resource, exc: SignerError
    ) -> None:
        record_failure(self.audit, principal, operation.value, resource, exc)


def record_failure(
    audit: AuditLog,
    principal: Principal,
    operation: str,
    resource: Resource,
    exc: SignerError,
    payload_sha256: str = "",
    request_id: str = "",
) -> None:
    """Audit a refused or failed request. The refusal stands even if the log is down."""
    outcome = failure_outcome(exc)
    try:
        audit.record(
            AuditEvent(
                principal.name,
                operation,
                outcome,
                resource.key_id,
                resource.role,
                resource.repository,
                payload_sha256,
                exc.code.name,
                exc.message[:500],
                request_id,
            )
        )
    except SignerError:
        pass
