"""gRPC statuses as Python exceptions, so callers catch what they mean."""

from __future__ import annotations

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
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ClientError):
    """The daemon or its token cannot serve now (retried with backoff before raising)."""

    code = grpc.StatusCode.UNAVAILABLE


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
