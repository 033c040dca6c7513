"""May this principal do this to this key? Composable policy objects.

A policy answers one question, ``authorize(principal, operation, resource)``, and raises
``PermissionDenied`` with a reason that names no secret. Policies compose: see
``AllOf`` and ``AnyOf``. The daemon's default (no policy file) is ``AllowAuthenticated``:
any client whose certificate chains to the configured CA may do anything; deployments
that need more load a policy file (``signer.policy.file.FilePolicy``), which denies by
default and also carries the rate limits, TUF limits and quorum settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from signer.errors import PermissionDenied
from signer.principal import Principal


class Operation(StrEnum):
    READ = "read"
    SIGN = "sign"
    SIGN_RAW = "sign-raw"  # non-TUF payloads and pre-hashed digests
    CREATE = "create"
    RETIRE = "retire"
    DESTROY = "destroy"
    APPROVE = "approve"
    AUDIT = "audit"
    CERTIFY = "certify"  # issue a certificate for a key (IssueCertificate)


class Resource(NamedTuple):  # a tuple: made per signature, 2x cheaper than a frozen dataclass
    """The key an operation touches (for create: the key about to exist)."""

    key_id: str = ""
    role: str = ""
    repository: str = ""


class Policy(Protocol):
    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        """Return if allowed; raise PermissionDenied saying why not."""


class AllowAuthenticated:
    """Every authenticated client may do everything (mTLS is the only gate)."""

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        return None


class DenyAll:
    """Nothing is allowed: the identity element of ``AnyOf``."""

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        raise PermissionDenied(denial(principal, operation, resource))


@dataclass(frozen=True)
class AllOf:
    """Allowed only if every member policy allows."""

    policies: tuple[Policy, ...]

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        for policy in self.policies:
            policy.authorize(principal, operation, resource)


@dataclass(frozen=True)
class AnyOf:
    """Allowed if some member policy allows; otherwise the first member's reason stands."""

    policies: tuple[Policy, ...]

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        first: PermissionDenied | None = None
        for policy in self.policies:
            try:
                policy.authorize(principal, operation, resource)
                return
            except PermissionDenied as exc:
                first = first or exc
        raise first or PermissionDenied(denial(principal, operation, resource))


def denial(principal: Principal, operation: Operation, resource: Resource) -> str:
    """Why a request is refused, naming only what the caller sent (never key material)."""
    if resource.key_id:
        target = f"key {resource.key_id}"
    elif resource.role:
        target = f"keys for role {resource.role!r}"
        if resource.repository:
            target += f" in repository {resource.repository!r}"
    else:
        target = "this resource"
    verb = {
        Operation.SIGN: "sign with",
        Operation.SIGN_RAW: "sign raw (non-TUF) data with",
        Operation.READ: "read",
        Operation.CREATE: "create",
        Operation.RETIRE: "retire",
        Operation.DESTROY: "destroy",
        Operation.APPROVE: "approve signature requests for",
        Operation.AUDIT: "read the audit data of",
        Operation.CERTIFY: "issue certificates for",
    }[operation]
    return f"{principal.name} may not {verb} {target}: no policy rule grants '{operation}'"


@dataclass(frozen=True)
class TufLimits:
    """Per-role maximum expiry, in days. Roles without an entry are not limited."""

    max_expiry_days: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QuorumSettings:
    """How many distinct approvers a quorum key needs, and how long a request stays open."""

    approvals: int = 2
    window_seconds: float = 3600.0


DEFAULT_TUF_LIMITS = TufLimits()
DEFAULT_QUORUM = QuorumSettings()


def tuf_limits_of(policy: Policy) -> TufLimits:
    """The TUF limits a policy carries (a policy file), else none."""
    limits = getattr(policy, "tuf", None)
    return limits if isinstance(limits, TufLimits) else DEFAULT_TUF_LIMITS


def quorum_of(policy: Policy) -> QuorumSettings:
    settings = getattr(policy, "quorum", None)
    return settings if isinstance(settings, QuorumSettings) else DEFAULT_QUORUM
