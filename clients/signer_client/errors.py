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
        # From the google.rpc.Status details, when the daemon sent them: ErrorInfo's
        # stable reason and metadata, RetryInfo's delay (seconds).
        self.reason = ""
        self.metadata: dict[str, str] = {}
        self.retry_delay: float | None = None

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
        """Seconds to wait before the same request can pass: RetryInfo, else the message
        (a daemon before status details)."""
        if self.retry_delay is not None:
            return self.retry_delay
        match = re.search(r"retry in ([0-9.]+)s", self.message)
        return float(match.group(1)) if match else None

    @property
    def burst(self) -> int | None:
        """The largest batch the principal may send, if this batch was larger."""
        if self.reason == "BATCH_OVER_BURST" and "burst" in self.metadata:
            return max(1, int(float(self.metadata["burst"])))
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
    error = from_code(code, details or "")
    _read_status_details(exc, error)
    return error


_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _read_status_details(exc: grpc.RpcError, error: ClientError) -> None:
    """ErrorInfo and RetryInfo from the ``google.rpc.Status`` trailer, if any (a bad or
    missing trailer leaves the error as the status code and message made it)."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    raw = next((v for k, v in trailers or () if k == _STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return
    try:
        from google.rpc import error_details_pb2, status_pb2

        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                error.reason, error.metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                error.retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    except Exception:
        return
