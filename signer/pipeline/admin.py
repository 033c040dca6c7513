"""Authorise-and-audit stages for administration: key lifecycle and quorum requests.

An ``Action`` is one request, with one audit entry: it is refused (and the refusal
audited) if its body raises a SignerError; a change records its allowed entry *before* it
takes effect (``allow()``, fail closed: a change the log cannot record is not made); a
read is recorded when it returns. The one exception: a change that fails *after* its
allowed entry was committed (the token or a store fails mid-change) gets a second entry,
``failed``, whose detail names the first by its sequence number, so the log never says a
change happened that did not.
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
        self.allowed_seq = 0  # the allowed entry's sequence number, once written

    def authorize(self, operation: Operation, resource: Resource | None = None) -> None:
        if resource is not None:
            self.resource = resource
        self.policy.authorize(self.principal, operation, self.resource)

    def allow(self, detail: str | None = None) -> None:
        """Record the allowed entry now: before a change, so it never goes unaudited."""
        if detail is not None:
            self.detail = detail
        seqs = self.recorder.record(
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
        self.allowed_seq = seqs[0] if seqs else 0

    def refuse(self, exc: SignerError) -> None:
        """Record the refusal (once: an error already recorded is left alone)."""
        if not is_audited(exc):
            detail = ""
            if self.recorded:
                detail = f"the change allowed in audit entry {self.allowed_seq} failed"
            self.recorder.refuse(
                self.principal,
                self.operation,
                self.resource,
                exc,
                self.payload_sha256,
                self.request_id,
                detail,
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
            self.refuse(exc)  # also after allow(): the change failed, say which one
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
