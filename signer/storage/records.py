"""The values the stores keep: plain records, shared by every backend and their callers.

They live here, not next to the code that uses them, so that a backend can build them
without importing the daemon's logic (no import cycles).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from signer.algorithms import Algorithm, get_algorithm


class KeyState(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    object_id: str
    algorithm_name: str
    label: str
    role: str
    repository: str
    public_key_pem: str
    tuf_key_json: str
    state: KeyState = KeyState.ACTIVE
    quorum: bool = False
    created_at: float = 0.0
    created_by: str = ""
    retired_at: float | None = None
    destroyed_at: float | None = None
    certificate_pem: str = ""  # the last certificate issued for the key (IssueCertificate)

    @cached_property  # asked several times per signature; a frozen record keeps it
    def algorithm(self) -> Algorithm:
        return get_algorithm(self.algorithm_name)


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


@dataclass(frozen=True)
class NotaryKey:
    notary_id: str
    key_id: str  # the registry's key_id
    algorithm: str  # notary's key algorithm: "ecdsa" or "ed25519"
    public: bytes  # as notary encodes it (see signer.notary.keys)
    role: str
    gun: str


@dataclass(frozen=True)
class VersionClaim:
    """A TUF version to record for (key, role): what the anti-rollback rule compares."""

    key_id: str
    role: str
    version: int
    payload_sha256: str
    expires: str
    principal: str
