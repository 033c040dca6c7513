"""Status messages and malformed requests: what ``signer.service.rpc`` sends a caller."""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from signer.errors import InvalidArgument, SignerError

# A status message travels in the grpc-message trailer, whose size is limited (8 KiB by
# default: a longer one turns the status into RESOURCE_EXHAUSTED "metadata size exceeds
# hard limit"). Messages quote client input, so every one is capped and kept on one line.
MAX_MESSAGE_CHARS = 1000
MAX_MESSAGE_BYTES = 2000  # UTF-8; the trailer percent-encodes each non-ASCII byte as 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def status_message(message: str) -> str:
    """``message`` made safe for a status: one line, no lone surrogates, capped."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    raw = text.encode("utf-8")
    if len(raw) > MAX_MESSAGE_BYTES:
        text = raw[: MAX_MESSAGE_BYTES - 3].decode("utf-8", "ignore") + "..."
    return text


DOMAIN = "signerd"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_details(error: SignerError, message: str) -> tuple[tuple[str, bytes], ...]:
    """The ``google.rpc.Status`` trailer: ErrorInfo (a stable reason; messages may be
    reworded) and, when the caller should wait, RetryInfo. Read by grpcio-status, the
    Go and Java libraries, and our client."""
    info = error_details_pb2.ErrorInfo(
        reason=error.error_reason, domain=DOMAIN, metadata=error.metadata
    )
    details = [_packed(info)]
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, int(error.retry_after * 1e9)))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Malformed:
    """Stands in for a request whose bytes are not a valid protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def check_request(request: Any) -> None:
    """InvalidArgument for a request whose bytes did not decode."""
    if isinstance(request, Malformed):
        raise InvalidArgument(f"malformed request: {request.error}")
