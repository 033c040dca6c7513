"""notary-signer's gRPC API (package ``proto``) on signerd: an HSM-backed notary-signer.

notary-server (``trust_service.type = "remote"``) creates its timestamp and snapshot keys
here and has them sign its metadata. Everything goes through the daemon's own path:

* CreateKey: ``KeyManager.create`` (policy ``create``, key generated in the token,
  registered with role = notary role and repository = GUN, audited), then the notary key
  ID is linked to the registry key_id (``notary.db`` in the state dir).
* GetKeyInfo: policy ``read``; audited.
* Sign: policy ``sign`` when the content is notary metadata of the key's role (a JSON
  object whose ``_type`` names the role, as notary-server always sends), otherwise
  ``sign-raw``; the policy's rate limit for the principal applies; the key must be
  active; one token call; the audit entry is committed before the signature is returned.
* DeleteKey: ``KeyManager.destroy`` (policy ``destroy``: notary-signer lets any client
  delete any key, we do not). Deleting an unknown or already deleted key succeeds, as in
  notary, for a principal that may delete notary keys at all.

Which roles this API creates keys for is limited (``[notary] roles``, by default
timestamp and snapshot: the only keys notary-server holds) on top of the policy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import grpc

from signer.audit import AuditEvent, AuditLog, Outcome, failure_outcome
from signer.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SignerError,
)
from signer.identity import Principal, principal_from_context
from signer.keys import AUDIT_ROLE, KeyManager, resource_of
from signer.notary import keys as nkeys
from signer.notary import signer_pb2 as pb
from signer.notary.store import NotaryKey, NotaryKeyStore
from signer.policy import Operation, Policy, Resource
from signer.policy.ratelimit import rate_limiter_of
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.service.errors import grpc_errors
from signer.service.registration import add_service
from signer.token import Token

log = logging.getLogger(__name__)

# The health-check service names notary-server polls (notary's const.go), besides the
# fully qualified service names.
HEALTH_KEY_MANAGEMENT = "grpc.health.v1.Health.KeyManagement"
HEALTH_SIGNER = "grpc.health.v1.Health.Signer"
HEALTH_OVERALL = "grpc.health.v1.Health.Overall"

_SERVICES = pb.DESCRIPTOR.services_by_name
SERVICE_NAMES = [_SERVICES["KeyManagement"].full_name, _SERVICES["Signer"].full_name]
HEALTH_NAMES = [*SERVICE_NAMES, HEALTH_KEY_MANAGEMENT, HEALTH_SIGNER, HEALTH_OVERALL]

DEFAULT_ROLES = ("timestamp", "snapshot")


class NotaryCore:
    """The notary operations on the daemon's parts, independent of gRPC."""

    def __init__(
        self,
        token: Token,
        registry: KeyRegistry,
        keys: KeyManager,
        audit: AuditLog,
        store: NotaryKeyStore,
        policy_of: Any,
        roles: tuple[str, ...] = DEFAULT_ROLES,
        max_payload_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.token = token
        self.registry = registry
        self.keys = keys
        self.audit = audit
        self.store = store
        self._policy_of = policy_of  # the current policy: it may be reloaded (SIGHUP)
        self.roles = roles
        self.max_payload_bytes = max_payload_bytes

    @property
    def policy(self) -> Policy:
        policy: Policy = self._policy_of()
        return policy

    # -- key management (blocking: run in the server's thread pool) ------------------------

    def create(self, principal: Principal, algorithm: str, gun: str, role: str) -> NotaryKey:
        if role not in self.roles:
            exc = PermissionDenied(
                f"the notary API creates keys for roles {', '.join(self.roles)} only, not {role!r}"
            )
            self._audit_failure_sync(principal, Operation.CREATE, Resource("", role, gun), exc)
            raise exc
        try:
            alg = nkeys.notary_algorithm(algorithm)
        except SignerError as exc:
            self._audit_failure_sync(principal, Operation.CREATE, Resource("", role, gun), exc)
            raise
        label = f"notary {role} {gun}"[:128].rstrip() or "notary"
        record = self.keys.create(principal, label, alg.signer_algorithm, role, gun)
        public = nkeys.public_bytes(nkeys.public_key_from_pem(record.public_key_pem))
        key = NotaryKey(nkeys.key_id(alg.name, public), record.key_id, alg.name, public, role, gun)
        self.store.add(key)
        log.info("notary CreateKey: %s key %s for %s %s", alg.name, key.notary_id, gun, role)
        return key

    def delete(self, principal: Principal, notary_id: str) -> None:
        try:
            key = self.store.get(notary_id)
        except NotFound:
            # As notary-signer: deleting a key that does not exist succeeds, but only for
            # a principal that may delete notary keys (else the answer would tell anyone
            # which key IDs exist).
            self._authorize_any_notary_key(principal, Operation.DESTROY, notary_id)
            self._record(
                principal,
                Operation.DESTROY,
                Outcome.ALLOWED,
                Resource(""),
                detail=f"notary key {notary_id}: unknown, nothing to delete",
            )
            return
        try:
            self.keys.destroy(principal, key.key_id, key.key_id)
        except FailedPrecondition:
            if self.registry.get(key.key_id).state is not KeyState.DESTROYED:
                raise
        log.info("notary DeleteKey: %s destroyed", notary_id)

    def _authorize_any_notary_key(
        self, principal: Principal, operation: Operation, notary_id: str
    ) -> None:
        """Allowed if the principal may do ``operation`` to notary keys of some role."""
        policy = self.policy
        first: PermissionDenied | None = None
        for role in self.roles:
            try:
                policy.authorize(principal, operation, Resource("", role, ""))
                return
            except PermissionDenied as exc:
                first = first or exc
        denied = first or PermissionDenied(f"{principal.name} may not {operation} notary keys")
        self._audit_failure_sync(principal, operation, Resource(""), denied, notary_id)
        raise denied

    # -- hot path (coroutines on the event loop) -------------------------------------------

    async def info(self, principal: Principal, notary_id: str) -> tuple[NotaryKey, KeyRecord]:
        resource = Resource("")
        try:
            key, record = self._lookup(notary_id)
            resource = resource_of(record)
            self.policy.authorize(principal, Operation.READ, resource)
        except SignerError as exc:
            await self._audit_failure(principal, Operation.READ, resource, exc, notary_id)
            raise
        await self.audit.record_async(
            self._event(principal, Operation.READ, Outcome.ALLOWED, resource, notary_id)
        )
        return key, record

    async def sign(
        self, principal: Principal, notary_id: str, content: bytes
    ) -> tuple[NotaryKey, bytes]:
        digest = hashlib.sha256(content).hexdigest()
        resource = Resource("")
        operation = Operation.SIGN
        try:
            if not notary_id:
                raise InvalidArgument("keyID is required")
            if not content:
                raise InvalidArgument("content is empty")
            if len(content) > self.max_payload_bytes:
                raise InvalidArgument(
                    f"content is {len(content)} bytes; the limit is {self.max_payload_bytes}"
                )
            policy = self.policy  # one policy for the request, even across a reload
            limiter = rate_limiter_of(policy)
            if limiter is not None:
                limiter.take(principal.name, 1)
            key, record = self._lookup(notary_id)
            resource = resource_of(record)
            operation = signing_operation(content, record.role)
            policy.authorize(principal, operation, resource)
            if record.state is not KeyState.ACTIVE:
                raise FailedPrecondition(
                    f"key {notary_id} is {record.state.value} and no longer signs"
                )
            if record.role == AUDIT_ROLE or record.quorum:
                raise PermissionDenied(f"key {notary_id} does not sign through the notary API")
            alg = record.algorithm
            signature = self.token.sign(record.object_id, alg, alg.to_be_signed(content))
        except SignerError as exc:
            await self._audit_failure(principal, operation, resource, exc, notary_id, digest)
            raise
        # Fail closed: no signature leaves before its audit entry is committed.
        await self.audit.record_async(
            self._event(principal, operation, Outcome.ALLOWED, resource, notary_id, digest)
        )
        return key, signature

    # -- helpers ---------------------------------------------------------------------------

    def _lookup(self, notary_id: str) -> tuple[NotaryKey, KeyRecord]:
        if not notary_id:
            raise InvalidArgument("keyID is required")
        key = self.store.get(notary_id)
        record = self.registry.get(key.key_id)
        if record.state is KeyState.DESTROYED:
            raise NotFound(f"key {notary_id} not found")
        return key, record

    @staticmethod
    def _event(
        principal: Principal,
        operation: Operation,
        outcome: Outcome,
        resource: Resource,
        notary_id: str,
        digest: str = "",
        exc: SignerError | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            principal.name,
            operation.value,
            outcome,
            resource.key_id,
            resource.role,
            resource.repository,
            digest,
            exc.code.name if exc else "OK",
            (f"notary key {notary_id}" + (f": {exc.message}" if exc else ""))[:500],
        )

    def _failure_event(
        self,
        principal: Principal,
        operation: Operation,
        resource: Resource,
        exc: SignerError,
        notary_id: str,
        digest: str = "",
    ) -> AuditEvent:
        outcome = failure_outcome(exc)
        return self._event(principal, operation, outcome, resource, notary_id, digest, exc)

    async def _audit_failure(
        self,
        principal: Principal,
        operation: Operation,
        resource: Resource,
        exc: SignerError,
        notary_id: str,
        digest: str = "",
    ) -> None:
        """Audit a refusal; the refusal stands even if the log cannot be written."""
        try:
            await self.audit.record_async(
                self._failure_event(principal, operation, resource, exc, notary_id, digest)
            )
        except SignerError:
            pass

    def _audit_failure_sync(
        self,
        principal: Principal,
        operation: Operation,
        resource: Resource,
        exc: SignerError,
        notary_id: str = "",
    ) -> None:
        try:
            self.audit.record(self._failure_event(principal, operation, resource, exc, notary_id))
        except SignerError:
            pass

    def _record(
        self,
        principal: Principal,
        operation: Operation,
        outcome: Outcome,
        resource: Resource,
        detail: str,
    ) -> None:
        self.audit.record(
            AuditEvent(
                principal.name,
                operation.value,
                outcome,
                resource.key_id,
                resource.role,
                resource.repository,
                detail=detail,
            )
        )


def signing_operation(content: bytes, role: str) -> Operation:
    """``sign`` for notary metadata of the key's own role, ``sign-raw`` for anything else.

    notary-server sends the canonical JSON of a role's ``signed`` object, whose ``_type``
    is the role name capitalised ("Timestamp", "Snapshot"). That is TUF metadata, but in
    notary's dialect, so the TUF payload rules (SignGuard) for the v1 API do not apply;
    this check keeps a timestamp key from signing arbitrary bytes under the plain ``sign``
    grant. Standard TUF spelling ("timestamp") needs ``sign-raw``: otherwise the notary API
    would sign v1-style TUF metadata past the v1 version and expiry rules.
    """
    if content[:1] != b"{":
        return Operation.SIGN_RAW
    try:
        parsed = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Operation.SIGN_RAW
    kind = parsed.get("_type") if isinstance(parsed, dict) else None
    if isinstance(kind, str) and kind == role.capitalize():
        return Operation.SIGN
    return Operation.SIGN_RAW


def _key_info(key: NotaryKey) -> pb.KeyInfo:
    return pb.KeyInfo(
        keyID=pb.KeyID(ID=key.notary_id), algorithm=pb.Algorithm(algorithm=key.algorithm)
    )


class KeyManagementServicer:
    def __init__(self, core: NotaryCore) -> None:
        self.core = core

    @grpc_errors
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> Any:
        principal = principal_from_context(context)
        key = self.core.create(principal, request.algorithm, request.gun, request.role)
        return pb.PublicKey(keyInfo=_key_info(key), publicKey=key.public)

    @grpc_errors
    def DeleteKey(self, request: pb.KeyID, context: grpc.ServicerContext) -> Any:
        principal = principal_from_context(context)
        self.core.delete(principal, request.ID)
        return pb.Void()

    @grpc_errors
    async def GetKeyInfo(self, request: pb.KeyID, context: Any) -> Any:
        principal = principal_from_context(context)
        key, _ = await self.core.info(principal, request.ID)
        return pb.GetKeyInfoResponse(keyInfo=_key_info(key), publicKey=key.public, role=key.role)


class SignerServicer:
    def __init__(self, core: NotaryCore) -> None:
        self.core = core

    @grpc_errors
    async def Sign(self, request: pb.SignatureRequest, context: Any) -> Any:
        principal = principal_from_context(context)
        key, signature = await self.core.sign(principal, request.keyID.ID, request.content)
        alg = nkeys.ALGORITHMS[key.algorithm]
        return pb.Signature(
            keyInfo=_key_info(key),
            algorithm=pb.Algorithm(algorithm=alg.signature),
            content=signature,
        )


def _roles(config: Any) -> tuple[str, ...]:
    section = config.extra.get("notary", {})
    roles = section.get("roles", list(DEFAULT_ROLES)) if isinstance(section, dict) else None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        from signer.errors import ConfigError

        raise ConfigError("[notary] roles must be a list of role names")
    return tuple(roles)


def _enabled(config: Any) -> bool:
    section = config.extra.get("notary", {})
    return not isinstance(section, dict) or bool(section.get("enabled", True))


def mount(daemon: Any) -> None:
    """Serve the notary-signer API on the daemon's server (called by signer.server)."""
    config = daemon.config
    if not _enabled(config):
        return
    app = daemon.app
    store = NotaryKeyStore(config.state_dir / "notary.db")
    core = NotaryCore(
        app.token,
        app.registry,
        app.keys,
        app.audit,
        store,
        lambda: app.policy,
        _roles(config),
        config.max_payload_bytes,
    )
    daemon.notary = core
    add_service(daemon.server, KeyManagementServicer(core), _SERVICES["KeyManagement"])
    add_service(daemon.server, SignerServicer(core), _SERVICES["Signer"])
    daemon.extra_service_names.extend(SERVICE_NAMES)
    daemon.health_names.extend(HEALTH_NAMES)
