"""May this principal do this to this key? Composable policy objects.

A policy answers one question, ``authorize(principal, operation, resource)``, and raises
``PermissionDenied`` with a reason that names no secret. Policies compose: see
``AllOf``. The daemon's default (no policy file) is ``AllowAuthenticated``: any client
whose certificate chains to the configured CA may do anything; deployments that need
more load a policy file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from signer.identity import Principal


class Operation(StrEnum):
    READ = "read"
    SIGN = "sign"
    SIGN_RAW = "sign-raw"  # non-TUF payloads and pre-hashed digests
    CREATE = "create"
    RETIRE = "retire"
    DESTROY = "destroy"
    APPROVE = "approve"
    AUDIT = "audit"


@dataclass(frozen=True)
class Resource:
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


@dataclass(frozen=True)
class AllOf:
    """Allowed only if every member policy allows."""

    policies: tuple[Policy, ...]

    def authorize(self, principal: Principal, operation: Operation, resource: Resource) -> None:
        for policy in self.policies:
            policy.authorize(principal, operation, resource)
