"""Turn the core's errors into gRPC statuses, and anything unexpected into INTERNAL."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from signer.errors import SignerError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Decorate a servicer method: SignerError -> its status; other errors -> INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except SignerError as exc:
            context.abort(exc.code, exc.message)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")

    return wrapper  # type: ignore[return-value]
