"""gRPC statuses as Python exceptions, so callers catch what they mean."""

from __future__ import annotations

import re

import grpc


class ClientError(Exception):
    """Root of every error the client raises; ``code`` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPreconditionError(ClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class RateLimitedError(ClientError):
    """Over the principal's rate limit; nothing was signed, so the request may be repeated.

    The daemon says when in its message ("retry in 0.42s") and, for a batch larger than
    the principal's burst, how large a batch may be ("exceed the burst of 100").
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before the same request can pass, if the daemon said."""
        match = re.search(r"retry in ([0-9.]+)s", self.message)
        return float(match.group(1)) if match else None

    @property
    def burst(self) -> int | None:
        """The largest batch the principal may send, if this batch was larger."""
        match = re.search(r"exceed the burst of ([0-9.]+)", self.message)
        return max(1, int(float(match.group(1)))) if match else None


class UnavailableError(ClientError):
    """The daemon or its token cannot serve now (retried with backoff before raising)."""

    code = grpc.StatusCode.UNAVAILABLE


class TlsConfigError(ClientError):
    """The CA, certificate or key file cannot be used (found before dialling the daemon)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        return f"TLS: {self.message}"


class SignatureMismatchError(ClientError):
    """The daemon returned a signature that does not verify with the key's public key."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        UnauthenticatedError,
        FailedPreconditionError,
        RateLimitedError,
        UnavailableError,
    )
}


def from_code(code: grpc.StatusCode, message: str) -> ClientError:
    cls = _BY_CODE.get(code, ClientError)
    return cls(message, code)


def from_rpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return from_code(code, details or "")
