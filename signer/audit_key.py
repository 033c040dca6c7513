"""The audit key: signs the audit log's checkpoints, from inside the token.

The audit package (``signer.audit``) knows neither the token nor the registry; its
``Checkpointer`` takes a ``CheckpointSigner``. ``AuditKey`` is the daemon's, made from
the token and the registry: an ECDSA P-256 key generated inside the token on first use
and registered with the reserved role ``audit`` (label ``signerd-audit``). It signs
nothing else: the API refuses to sign with it and to create other keys with that role.

``signer.audit.verify`` checks checkpoints with the public keys registered with role
``audit`` in ``keys.db`` (read-only, no token needed).
"""

from __future__ import annotations

import logging

from signer.algorithms import ECDSA_P256, public_key_pem, tuf_key, tuf_key_json
from signer.audit import AUDIT_ROLE, AuditEvent, AuditLog, Outcome
from signer.registry import KeyRecord, KeyRegistry
from signer.token import Token

log = logging.getLogger(__name__)

AUDIT_KEY_LABEL = "signerd-audit"
SYSTEM_PRINCIPAL = "signerd"  # the daemon itself, in audit entries it writes on its own


class AuditKey:
    """The daemon's ``CheckpointSigner``: the active audit key in the token."""

    def __init__(self, token: Token, registry: KeyRegistry, audit: AuditLog) -> None:
        self.token = token
        self.registry = registry
        self.audit = audit

    @property
    def key_id(self) -> str:
        return self.record().key_id

    def sign(self, message: bytes) -> bytes:
        key = self.record()
        alg = key.algorithm
        raw = self.token.sign(key.object_id, alg, alg.to_be_signed(message))
        return alg.encode_signature(raw)

    def record(self) -> KeyRecord:
        """The active audit key; generated in the token and registered on first use.

        Workers race to make it on their first checkpoint: the maker holds the audit
        database's write lock meanwhile, so exactly one key is made.
        """
        found = self._find()
        if found is not None:
            return found
        with self.audit.exclusive():
            found = self._find()  # made by another worker while we waited?
            if found is None:
                made = self._make()
        if found is not None:
            return found
        self.audit.record(  # after the lock is released: the audit writer needs it
            AuditEvent(
                SYSTEM_PRINCIPAL,
                "create",
                Outcome.ALLOWED,
                made.key_id,
                AUDIT_ROLE,
                detail="audit checkpoint key",
            )
        )
        log.info("created the audit checkpoint key %s in the token", made.key_id)
        return made

    def _find(self) -> KeyRecord | None:
        for record in self.registry.find(role=AUDIT_ROLE, state="active"):
            return record
        return None

    def _make(self) -> KeyRecord:
        object_id, public = self.token.generate(ECDSA_P256, AUDIT_KEY_LABEL)
        key = tuf_key(ECDSA_P256, public)
        return self.registry.add(
            KeyRecord(
                key_id=key.keyid,
                object_id=object_id,
                algorithm_name=ECDSA_P256.name,
                label=AUDIT_KEY_LABEL,
                role=AUDIT_ROLE,
                repository="",
                public_key_pem=public_key_pem(public),
                tuf_key_json=tuf_key_json(key),
                created_by=SYSTEM_PRINCIPAL,
            )
        )
