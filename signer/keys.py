"""Key lifecycle: create inside the token, look up, retire, destroy. Every step audited.

Each request is one ``Action`` of the pipeline's administration stages: authorised by the
policy, its refusal audited; a change is audited before it takes effect (a new key whose
creation cannot be audited is removed again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from signer import names
from signer.algorithms import Algorithm, get_algorithm, public_key_pem, tuf_key, tuf_key_json
from signer.errors import FailedPrecondition, InvalidArgument, PermissionDenied, SignerError
from signer.identity import Principal
from signer.pipeline.admin import Action, Administration
from signer.pipeline.admission import AUDIT_ROLE, resource_of
from signer.policy import Operation, Resource
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.token import Token

__all__ = ["AUDIT_ROLE", "KeyManager", "resource_of"]


def _check_names(label: str, role: str, repository: str) -> None:
    names.check_label(label)
    names.check_role(role)
    if role == AUDIT_ROLE:
        raise InvalidArgument("role 'audit' is reserved for the daemon's audit checkpoint key")
    names.check_repository(repository)


class KeyManager:
    def __init__(self, token: Token, registry: KeyRegistry, admin: Administration) -> None:
        self.token = token
        self.registry = registry
        self.admin = admin

    def create(
        self,
        principal: Principal,
        label: str,
        algorithm_name: str,
        role: str,
        repository: str = "",
        quorum: bool = False,
        on_created: Callable[[KeyRecord], None] | None = None,
    ) -> KeyRecord:
        """Create a key in the token; ``on_created`` runs (e.g. the notary key map) before
        the audit entry is written, so a failure there undoes the key too."""
        with self.admin.action(
            principal, Operation.CREATE, Resource("", role[:256], repository[:256])
        ) as action:
            _check_names(label, role, repository)
            algorithm: Algorithm = get_algorithm(algorithm_name)
            action.authorize(Operation.CREATE)
            record = self._make(principal, algorithm, label, role, repository, quorum)
            action.resource = resource_of(record)
            try:
                if on_created is not None:
                    on_created(record)
                action.allow()
            except SignerError:
                # Fail closed: a key whose creation cannot be audited does not stay.
                with contextlib.suppress(SignerError):
                    self.token.destroy(record.object_id)
                    self.registry.set_state(record.key_id, KeyState.DESTROYED)
                raise
        return record

    def _make(
        self,
        principal: Principal,
        algorithm: Algorithm,
        label: str,
        role: str,
        repository: str,
        quorum: bool,
    ) -> KeyRecord:
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

    def get(self, principal: Principal, key_id: str) -> KeyRecord:
        with self.admin.action(principal, Operation.READ, Resource(key_id[:256])) as action:
            return self._lookup(action, Operation.READ, key_id)

    def list(
        self,
        principal: Principal,
        role: str = "",
        repository: str = "",
        state: str = "",
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[KeyRecord], bool]:
        """Keys matching the filter that the principal may read (others are left out),
        oldest first, past ``after`` (created_at, key_id), at most ``limit``; and whether
        more may follow the last one (the caller's next page starts after it).

        Keys the principal may not read do not count against ``limit``: the store is read
        in chunks until the page is full or the store is exhausted.
        """
        with self.admin.action(
            principal, "list", Resource("", role[:256], repository[:256])
        ) as action:
            visible: list[KeyRecord] = []
            cursor = after
            more = False
            while limit is None or len(visible) < limit:
                chunk = self.registry.find(role, repository, state, cursor, limit)
                for i, record in enumerate(chunk):
                    cursor = (record.created_at, record.key_id)
                    try:
                        action.policy.authorize(principal, Operation.READ, resource_of(record))
                    except PermissionDenied:
                        continue
                    visible.append(record)
                    if limit is not None and len(visible) == limit:
                        # full: more follow if this chunk goes on, or was full itself
                        more = i + 1 < len(chunk) or len(chunk) == limit
                        break
                if limit is None or len(chunk) < limit:
                    break
            action.detail = f"{len(visible)} key(s) visible"
        return visible, more

    def retire(self, principal: Principal, key_id: str) -> KeyRecord:
        with self.admin.action(principal, Operation.RETIRE, Resource(key_id[:256])) as action:
            record = self._lookup(action, Operation.RETIRE, key_id)
            if record.state is not KeyState.ACTIVE:
                raise FailedPrecondition(f"key {key_id} is {record.state.value}, not active")
            action.allow()
            return self.registry.set_state(key_id, KeyState.RETIRED)

    def destroy(self, principal: Principal, key_id: str, confirm: str) -> KeyRecord:
        with self.admin.action(principal, Operation.DESTROY, Resource(key_id[:256])) as action:
            record = self._lookup(action, Operation.DESTROY, key_id)
            if confirm != key_id:
                raise InvalidArgument("confirm must repeat the key_id of the key to destroy")
            if record.state is KeyState.DESTROYED:
                raise FailedPrecondition(f"key {key_id} is already destroyed")
            action.allow()
            self.token.destroy(record.object_id)
            return self.registry.set_state(key_id, KeyState.DESTROYED)

    def _lookup(self, action: Action, operation: Operation, key_id: str) -> KeyRecord:
        """Find a key and check the principal may perform ``operation`` on it."""
        if not key_id:
            raise InvalidArgument("key_id is required")
        record = self.registry.get(key_id)
        action.authorize(operation, resource_of(record))
        return record
