"""The two error roots of the daemon.

``RequestError``: the request cannot be served as asked (the caller can fix it).
``ServiceError``: the daemon or its token cannot serve right now (the operator fixes it;
the caller may retry). Each carries the gRPC status it is reported with, so the
service layer never guesses. The status is named here and looked up in ``grpc`` only when
read, so importing this module loads no gRPC (the supervisor imports it, and never serves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class _Status:
    """``cls.code``: the ``grpc.StatusCode`` named by the class's ``status``."""

    def __get__(self, obj: object, owner: type[SignerError]) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[owner.status]


class SignerError(Exception):
    """Base of every error the daemon reports to a caller.

    ``reason`` is the stable, machine-readable cause sent as ``google.rpc.ErrorInfo``
    (messages may be reworded; reasons are not); ``retry_after`` becomes
    ``google.rpc.RetryInfo``; ``metadata`` goes into ErrorInfo as well.
    """

    status: str = "INTERNAL"  # the name of its grpc.StatusCode
    code = _Status()
    reason: str = ""  # default: the status code's name

    def __init__(
        self,
        message: str,
        reason: str = "",
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.retry_after = retry_after
        self.metadata = metadata or {}

    @property
    def error_reason(self) -> str:
        return self.reason or self.code.name


class RequestError(SignerError):
    """The request is wrong: bad input, unknown key, not permitted."""

    status = "INVALID_ARGUMENT"


class InvalidArgument(RequestError):
    status = "INVALID_ARGUMENT"


class NotFound(RequestError):
    status = "NOT_FOUND"


class AlreadyExists(RequestError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(RequestError):
    """The request is well formed but the key or request is in the wrong state."""

    status = "FAILED_PRECONDITION"


class PermissionDenied(RequestError):
    status = "PERMISSION_DENIED"


class Unauthenticated(RequestError):
    status = "UNAUTHENTICATED"


class ResourceExhausted(RequestError):
    status = "RESOURCE_EXHAUSTED"


class ServiceError(SignerError):
    """The daemon cannot serve now; nothing the caller sent is at fault."""

    status = "INTERNAL"


class TokenUnavailable(ServiceError):
    """The PKCS#11 token cannot be used now (removed, session lost, not logged in).

    The daemon heals itself in the background; callers retry with backoff.
    """

    status = "UNAVAILABLE"


class AuditUnavailable(ServiceError):
    """The audit log could not be written: we fail closed and return no signature."""

    status = "UNAVAILABLE"


class StorageUnavailable(ServiceError):
    """The daemon's state (a database) cannot be read or written now: fail closed."""

    status = "UNAVAILABLE"


class ConfigError(Exception):
    """The daemon's configuration is invalid; raised at start-up, never to a caller."""


def shown(value: str, limit: int = 64) -> str:
    """Client input quoted for an error message: at most ``limit`` characters of it.

    Quoted as Python's ``repr`` does (control characters, lone surrogates and other
    unprintable characters escaped, so the message stays one line); longer values are cut
    and say how long they were: ``'abcd'... (1048576 characters)``.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
