"""Turn the core's errors into gRPC statuses, and anything unexpected into INTERNAL.

Works for both kinds of handler the asyncio server runs: ``async def`` hot paths
(signing) and plain functions (administration), which run in its thread pool.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from signer.errors import InvalidArgument, SignerError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Malformed:
    """Stands in for a request whose bytes are not a valid protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _check(request: Any) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"malformed request: {request.error}")


def grpc_errors(method: F) -> F:
    """Decorate a servicer method: SignerError -> its status; other errors -> INTERNAL."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                _check(request)
                return await method(self, request, context)
            except SignerError as exc:
                await context.abort(exc.code, exc.message)
            except Exception:
                log.exception("unexpected error in %s", method.__name__)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal error; see the daemon's log"
                )

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            _check(request)
            return method(self, request, context)
        except SignerError as exc:
            context.abort(exc.code, exc.message)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")

    return wrapper  # type: ignore[return-value]
