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

import logging
from typing import Any

import grpc

from signer.config import NotaryConfig
from signer.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SignerError,
)
from signer.identity import Principal, principal_from_context
from signer.keys import KeyManager
from signer.notary import keys as nkeys
from signer.notary import signer_pb2 as pb
from signer.notary.retire import Retirer, RetireSchedule
from signer.notary.rules import DIALECT
from signer.notary.store import NotaryKey, NotaryKeyStore
from signer.pipeline.admin import Administration
from signer.pipeline.admission import resource_of
from signer.pipeline.auditing import Recorder
from signer.pipeline.guards import SignInput
from signer.pipeline.signing import Pipeline
from signer.policy import Operation, Resource
from signer.registry import KeyRecord, KeyRegistry, KeyState
from signer.service.registration import add_service
from signer.service.rpc import rpc
from signer.storage.sqlite import inline_or_thread

log = logging.getLogger(__name__)

# The health-check service names notary-server polls (notary's const.go), besides the
# fully qualified service names.
HEALTH_KEY_MANAGEMENT = "grpc.health.v1.Health.KeyManagement"
HEALTH_SIGNER = "grpc.health.v1.Health.Signer"
HEALTH_OVERALL = "grpc.health.v1.Health.Overall"

_SERVICES = pb.DESCRIPTOR.services_by_name
SERVICE_NAMES = [_SERVICES["KeyManagement"].full_name, _SERVICES["Signer"].full_name]
HEALTH_NAMES = [*SERVICE_NAMES, HEALTH_KEY_MANAGEMENT, HEALTH_SIGNER, HEALTH_OVERALL]

DEFAULT_ROLES = NotaryConfig().roles  # timestamp and snapshot, as notary-server asks


class NotaryCore:
    """The notary operations on the daemon's pipeline, independent of gRPC."""

    def __init__(
        self,
        registry: KeyRegistry,
        keys: KeyManager,
        pipeline: Pipeline,
        admin: Administration,
        store: NotaryKeyStore,
        roles: tuple[str, ...] = DEFAULT_ROLES,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.pipeline = pipeline
        self.admin = admin
        self.store = store
        self.roles = roles

    @property
    def recorder(self) -> Recorder:
        return self.admin.recorder

    # -- key management (blocking: run in the server's thread pool) ------------------------

    def create(self, principal: Principal, algorithm: str, gun: str, role: str) -> NotaryKey:
        resource = Resource("", role[:256], gun[:256])
        try:
            if role not in self.roles:
                raise PermissionDenied(
                    f"the notary API creates keys for roles {', '.join(self.roles)} only, "
                    f"not {role[:64]!r}"
                )
            alg = nkeys.notary_algorithm(algorithm)
        except SignerError as exc:
            self.recorder.refuse(principal, Operation.CREATE, resource, exc)
            raise
        made: list[NotaryKey] = []

        def link(record: KeyRecord) -> None:  # before the audit entry: undone with the key
            public = nkeys.public_bytes(nkeys.public_key_from_pem(record.public_key_pem))
            key = NotaryKey(
                nkeys.key_id(alg.name, public), record.key_id, alg.name, public, role, gun
            )
            self.store.add(key)
            made.append(key)

        label = f"notary {role} {gun}"[:128].rstrip() or "notary"
        self.keys.create(principal, label, alg.signer_algorithm, role, gun, on_created=link)
        key = made[0]
        log.info("notary CreateKey: %s key %s for %s %s", alg.name, key.notary_id, gun, role)
        return key

    def delete(self, principal: Principal, notary_id: str) -> None:
        try:
            key = self.store.get(notary_id)
        except NotFound:
            # As notary-signer: deleting a key that does not exist succeeds, but only for
            # a principal that may delete notary keys (else the answer would tell anyone
            # which key IDs exist).
            with self.admin.action(principal, Operation.DESTROY) as action:
                self._authorize_any_notary_key(action.policy, principal, Operation.DESTROY)
                action.detail = f"notary key {notary_id[:80]}: unknown, nothing to delete"
            return
        record = self.registry.get(key.key_id)
        if record.state is KeyState.DESTROYED:
            # Gone already: as for an unknown key the delete succeeds, and its one entry
            # says so (not a FAILED_PRECONDITION entry for an answer of OK).
            with self.admin.action(principal, Operation.DESTROY, resource_of(record)) as action:
                action.authorize(Operation.DESTROY)
                action.detail = f"notary key {notary_id[:80]}: already destroyed"
            return
        self.keys.destroy(principal, key.key_id, key.key_id)
        log.info("notary DeleteKey: %s destroyed", notary_id)

    def _authorize_any_notary_key(
        self, policy: Any, principal: Principal, operation: Operation
    ) -> None:
        """Allowed if the principal may do ``operation`` to notary keys of some role."""
        first: PermissionDenied | None = None
        for role in self.roles:
            try:
                policy.authorize(principal, operation, Resource("", role, ""))
                return
            except PermissionDenied as exc:
                first = first or exc
        raise first or PermissionDenied(f"{principal.name} may not {operation} notary keys")

    def info(self, principal: Principal, notary_id: str) -> NotaryKey:
        with self.admin.action(principal, Operation.READ, Resource(notary_id[:256])) as action:
            key, record = self._lookup(notary_id)
            action.authorize(Operation.READ, resource_of(record))
            action.detail = f"notary key {notary_id}"
            return key

    # -- hot path (a coroutine on the event loop) ------------------------------------------

    async def sign(
        self, principal: Principal, notary_id: str, content: bytes
    ) -> tuple[NotaryKey, bytes]:
        try:
            key, record = await inline_or_thread(self._lookup, notary_id)
        except SignerError as exc:
            await self.recorder.refuse_async(
                principal, Operation.SIGN, Resource(), exc, detail=f"notary key {notary_id[:80]}"
            )
            raise
        item = SignInput(
            record.key_id, payload=content, dialect=DIALECT, detail=f"notary key {notary_id}"
        )
        (result,) = await self.pipeline.sign(principal, [item])
        if isinstance(result, SignerError):
            raise result
        return key, result.raw

    def _lookup(self, notary_id: str) -> tuple[NotaryKey, KeyRecord]:
        if not notary_id:
            raise InvalidArgument("keyID is required")
        key = self.store.get(notary_id)
        record = self.registry.get(key.key_id)
        if record.state is KeyState.DESTROYED:
            raise NotFound(f"key {notary_id} not found")
        return key, record


def _key_info(key: NotaryKey) -> pb.KeyInfo:
    return pb.KeyInfo(
        keyID=pb.KeyID(ID=key.notary_id), algorithm=pb.Algorithm(algorithm=key.algorithm)
    )


class KeyManagementServicer:
    def __init__(self, core: NotaryCore) -> None:
        self.core = core
        self.recorder = core.recorder

    @rpc("create")
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> Any:
        principal = principal_from_context(context)
        key = self.core.create(principal, request.algorithm, request.gun, request.role)
        return pb.PublicKey(keyInfo=_key_info(key), publicKey=key.public)

    @rpc("destroy")
    def DeleteKey(self, request: pb.KeyID, context: grpc.ServicerContext) -> Any:
        principal = principal_from_context(context)
        self.core.delete(principal, request.ID)
        return pb.Void()

    @rpc("read")
    def GetKeyInfo(self, request: pb.KeyID, context: Any) -> Any:
        principal = principal_from_context(context)
        key = self.core.info(principal, request.ID)
        return pb.GetKeyInfoResponse(keyInfo=_key_info(key), publicKey=key.public, role=key.role)


class SignerServicer:
    def __init__(self, core: NotaryCore) -> None:
        self.core = core
        self.recorder = core.recorder

    @rpc("sign")
    async def Sign(self, request: pb.SignatureRequest, context: Any) -> Any:
        principal = principal_from_context(context)
        key, signature = await self.core.sign(principal, request.keyID.ID, request.content)
        alg = nkeys.ALGORITHMS[key.algorithm]
        return pb.Signature(
            keyInfo=_key_info(key),
            algorithm=pb.Algorithm(algorithm=alg.signature),
            content=signature,
        )


def mount(daemon: Any) -> None:
    """Serve the notary-signer API on the daemon's server (called by signer.server)."""
    settings: NotaryConfig = daemon.config.notary
    if not settings.enabled:
        return
    app = daemon.app
    core = NotaryCore(
        app.registry, app.keys, app.pipeline, app.admin, app.notary_keys, settings.roles
    )
    daemon.notary = core
    if settings.retire_unused_days > 0:
        retirer = Retirer(app.registry, app.notary_keys, app.recorder, app.audit)
        schedule = RetireSchedule(retirer, settings)
        schedule.start()
        daemon.notary_retire = schedule
    add_service(daemon.server, KeyManagementServicer(core), _SERVICES["KeyManagement"])
    add_service(daemon.server, SignerServicer(core), _SERVICES["Signer"])
    daemon.extra_service_names.extend(SERVICE_NAMES)
    daemon.health_names.extend(HEALTH_NAMES)
