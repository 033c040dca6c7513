"""The audit log: every request, allowed or denied, appended to a hash chain in SQLite."""

from signer.audit.log import AuditEvent, AuditLog, Outcome, failure_outcome

__all__ = ["AuditEvent", "AuditLog", "Outcome", "failure_outcome"]
