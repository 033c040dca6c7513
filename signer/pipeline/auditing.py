"""The audit stage: every request leaves one entry, allowed, denied or failed.

A refusal is recorded and stands even when the log cannot be written (nothing was
signed); an allowed operation is recorded *before* its result leaves (fail closed). An
error that has been recorded is marked, so the service layer's safety net (which audits
whatever reached it unrecorded: malformed requests, missing certificates, bugs) never
writes a second entry for it.
"""

from __future__ import annotations

import logging

from signer.audit import AuditEvent, AuditLog, Outcome, failure_outcome
from signer.errors import SignerError
from signer.identity import Principal
from signer.metrics import NO_METRICS, Observer
from signer.policy import Resource

log = logging.getLogger(__name__)

_MARK = "_audited"
DETAIL_LIMIT = 500


def mark_audited(exc: BaseException) -> None:
    setattr(exc, _MARK, True)


def is_audited(exc: BaseException) -> bool:
    return bool(getattr(exc, _MARK, False))


def allowed_event(
    principal: Principal | str,
    operation: str,
    resource: Resource,
    payload_sha256: str = "",
    detail: str = "",
    request_id: str = "",
) -> AuditEvent:
    return AuditEvent(
        str(principal),
        operation,
        Outcome.ALLOWED,
        resource.key_id,
        resource.role,
        resource.repository,
        payload_sha256,
        detail=detail[:DETAIL_LIMIT],
        request_id=request_id,
    )


def failure_event(
    principal: Principal | str,
    operation: str,
    resource: Resource,
    exc: SignerError,
    payload_sha256: str = "",
    request_id: str = "",
    detail: str = "",
) -> AuditEvent:
    message = f"{detail}: {exc.message}" if detail else exc.message
    return AuditEvent(
        str(principal),
        operation,
        failure_outcome(exc),
        resource.key_id[:256],
        resource.role[:256],
        resource.repository[:256],
        payload_sha256,
        exc.code.name,
        message[:DETAIL_LIMIT],
        request_id[:256],
    )


class Recorder:
    """Writes the pipeline's audit entries, on a thread (``record``) or the loop (``*_async``).

    ``metrics``: where the requests it sees through are counted too (``signer.metrics``)."""

    def __init__(self, audit: AuditLog, metrics: Observer = NO_METRICS) -> None:
        self.audit = audit
        self.metrics = metrics

    def record(self, *events: AuditEvent) -> list[int]:
        """Commit allowed entries (and any refusals with them); raises AuditUnavailable."""
        return self.audit.record(*events) if events else []

    async def record_async(self, *events: AuditEvent) -> list[int]:
        return await self.audit.record_async(*events) if events else []

    def refusals(self, events: list[AuditEvent], errors: list[SignerError]) -> None:
        """Commit refusal entries; the refusals stand even if the log is down."""
        try:
            self.record(*events)
        except SignerError as exc:
            log.error("could not audit %d refusal(s): %s", len(events), exc.message)
        for error in errors:
            mark_audited(error)

    async def refusals_async(self, events: list[AuditEvent], errors: list[SignerError]) -> None:
        try:
            await self.record_async(*events)
        except SignerError as exc:
            log.error("could not audit %d refusal(s): %s", len(events), exc.message)
        for error in errors:
            mark_audited(error)

    def refuse(
        self,
        principal: Principal | str,
        operation: str,
        resource: Resource,
        exc: SignerError,
        payload_sha256: str = "",
        request_id: str = "",
        detail: str = "",
    ) -> None:
        """Record one refusal (once: an error already recorded is left alone)."""
        if not is_audited(exc):
            self.refusals(
                [
                    failure_event(
                        principal, operation, resource, exc, payload_sha256, request_id, detail
                    )
                ],
                [exc],
            )

    async def refuse_async(
        self,
        principal: Principal | str,
        operation: str,
        resource: Resource,
        exc: SignerError,
        payload_sha256: str = "",
        request_id: str = "",
        detail: str = "",
    ) -> None:
        """``refuse`` on the event loop."""
        if not is_audited(exc):
            event = failure_event(
                principal, operation, resource, exc, payload_sha256, request_id, detail
            )
            await self.refusals_async([event], [exc])
