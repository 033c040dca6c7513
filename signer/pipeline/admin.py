"""Authorise-and-audit stages for administration: key lifecycle and quorum requests.

An ``Action`` is one request: it is refused (and the refusal audited) if its body raises
a SignerError; a change records its allowed entry *before* it takes effect
(``allow()``, fail closed); a read is recorded when it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from signer.errors import ResourceExhausted, SignerError
from signer.identity import Principal
from signer.pipeline.admission import take_rate
from signer.pipeline.auditing import Recorder, allowed_event, is_audited
from signer.policy import Operation, Policy, Resource


class Action:
    """``with admin.action(...) as action:`` around one administrative request."""

    def __init__(
        self,
        recorder: Recorder,
        policy: Policy,
        principal: Principal,
        operation: str,
        resource: Resource,
        payload_sha256: str = "",
        request_id: str = "",
    ) -> None:
        self.recorder = recorder
        self.policy = policy  # one policy for the whole request, even across a reload
        self.principal = principal
        self.operation = operation
        self.resource = resource
        self.payload_sha256 = payload_sha256
        self.request_id = request_id
        self.detail = ""
        self.recorded = False

    def authorize(self, operation: Operation, resource: Resource | None = None) -> None:
        if resource is not None:
            self.resource = resource
        self.policy.authorize(self.principal, operation, self.resource)

    def allow(self, detail: str | None = None) -> None:
        """Record the allowed entry now: before a change, so it never goes unaudited."""
        if detail is not None:
            self.detail = detail
        self.recorder.record(
            allowed_event(
                self.principal,
                self.operation,
                self.resource,
                self.payload_sha256,
                self.detail,
                self.request_id,
            )
        )
        self.recorded = True

    def refuse(self, exc: SignerError) -> None:
        """Record the refusal (once: an error already recorded is left alone)."""
        if not is_audited(exc):
            self.recorder.refuse(
                self.principal,
                self.operation,
                self.resource,
                exc,
                self.payload_sha256,
                self.request_id,
            )

    def __enter__(self) -> Action:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, SignerError):
            self.refuse(exc)  # also after allow(): the change failed, say so
            return
        if exc is None and not self.recorded:
            self.allow()


class Administration:
    """Makes the Actions of administrative requests, with the current policy."""

    def __init__(self, recorder: Recorder, policy: Callable[[], Policy]) -> None:
        self.recorder = recorder
        self.policy = policy

    def action(
        self,
        principal: Principal,
        operation: str,
        resource: Resource | None = None,
        payload_sha256: str = "",
        request_id: str = "",
        rate_limited: bool = False,
    ) -> Action:
        """Start a request; ``rate_limited`` charges it to the principal's bucket first."""
        action = Action(
            self.recorder,
            self.policy(),
            principal,
            operation,
            resource or Resource(),
            payload_sha256,
            request_id,
        )
        if rate_limited:
            try:
                take_rate(action.policy, principal)
            except SignerError as exc:
                if isinstance(exc, ResourceExhausted):
                    self.recorder.metrics.rate_limited(exc.error_reason)
                action.refuse(exc)
                raise
        return action
