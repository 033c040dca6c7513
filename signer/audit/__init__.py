"""The audit log: every request, allowed or denied, appended to a hash chain in SQLite."""

from signer.audit.log import AUDIT_ROLE, AuditEvent, AuditLog, Outcome, failure_outcome

__all__ = ["AUDIT_ROLE", "AuditEvent", "AuditLog", "Outcome", "failure_outcome"]
