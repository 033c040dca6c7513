"""The checks every path makes before a key is used: one place, one wording."""

from __future__ import annotations

from signer.audit import AUDIT_ROLE
from signer.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from signer.identity import Principal
from signer.policy import Policy, Resource
from signer.policy.ratelimit import rate_limiter_of
from signer.registry import KeyRecord, KeyState

__all__ = ["AUDIT_ROLE", "check_payload", "check_usable", "resource_of", "take_rate"]


def resource_of(key: KeyRecord) -> Resource:
    return Resource(key.key_id, key.role, key.repository)


def check_usable(key: KeyRecord) -> None:
    """Only an active key signs, and never the audit key (it signs only checkpoints)."""
    if key.state is not KeyState.ACTIVE:
        raise FailedPrecondition(f"key {key.key_id} is {key.state.value} and no longer signs")
    if key.role == AUDIT_ROLE:
        raise PermissionDenied(f"key {key.key_id} is the audit key: it signs only checkpoints")


def check_payload(payload: bytes, limit: int, name: str = "payload") -> None:
    """A payload is never empty and never over the configured size."""
    if not payload:
        raise InvalidArgument(f"{name} is empty")
    if len(payload) > limit:
        raise InvalidArgument(f"{name} is {len(payload)} bytes; the limit is {limit}")


def take_rate(policy: Policy, principal: Principal, n: int = 1) -> None:
    """Charge ``n`` requests to the principal's bucket (one per source and name: a CN
    ``admin`` is not the DNS SAN ``admin``); ResourceExhausted when over."""
    limiter = rate_limiter_of(policy)
    if limiter is not None:
        limiter.take(principal, max(1, n))
