"""Turn the core's errors into gRPC statuses, and anything unexpected into INTERNAL.

Works for both kinds of handler the asyncio server runs: ``async def`` hot paths
(signing) and plain functions (administration), which run in its thread pool.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from signer.errors import InvalidArgument, SignerError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

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


class Malformed:
    """Stands in for a request whose bytes are not a valid protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def check_request(request: Any) -> None:
    """InvalidArgument for a request whose bytes did not decode."""
    if isinstance(request, Malformed):
        raise InvalidArgument(f"malformed request: {request.error}")


def grpc_errors(method: F) -> F:
    """Decorate a servicer method: SignerError -> its status; other errors -> INTERNAL."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                check_request(request)
                return await method(self, request, context)
            except SignerError as exc:
                await context.abort(exc.code, status_message(exc.message))
            except Exception:
                log.exception("unexpected error in %s", method.__name__)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal error; see the daemon's log"
                )

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            check_request(request)
            return method(self, request, context)
        except SignerError as exc:
            context.abort(exc.code, status_message(exc.message))
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")

    return wrapper  # type: ignore[return-value]
