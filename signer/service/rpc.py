"""The servicer side of the pipeline: every RPC leaves one audit entry, and one status.

``rpc(operation)`` decorates a servicer method. The core audits what it decides; this
is the safety net for whatever reaches the status mapping unrecorded: a malformed
request, a missing or refused client certificate, an empty batch, a bug. Such an error
is audited here (once: errors the core recorded are marked) before its status is sent.
The servicer names its ``recorder`` (``signer.pipeline.Recorder``), whose ``metrics``
count each RPC by name (``Service.Method``: ``Signing.Sign``), outcome and code.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from signer.errors import ServiceError, SignerError
from signer.identity import principal_from_context
from signer.logs import REQUESTS, log_request, new_request_id
from signer.pipeline.auditing import Recorder, is_audited
from signer.policy import Resource
from signer.service.errors import check_request, status_details, status_message

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

UNAUTHENTICATED = "(unauthenticated)"


def _caller(context: Any) -> str:
    try:
        return principal_from_context(context).name
    except SignerError:
        return UNAUTHENTICATED


def _resource(request: Any) -> Resource:
    key_id = getattr(request, "key_id", "")
    if not isinstance(key_id, str):  # notary: keyID is a message
        key_id = getattr(getattr(request, "keyID", None), "ID", "") or getattr(request, "ID", "")
    return Resource(key_id[:256] if isinstance(key_id, str) else "")


def _unexpected(method: str, exc: Exception) -> ServiceError:
    log.error("unexpected error in %s", method, exc_info=exc)
    error = ServiceError("internal error; see the daemon's log")
    error.__cause__ = exc
    return error


def _request_line(rpc_name: str, request: Any, context: Any, code: str, started: float) -> None:
    """The structured request line ([log] requests); a cheap level check when it is off."""
    if REQUESTS.isEnabledFor(logging.INFO):
        log_request(
            new_request_id(),
            _caller(context),
            rpc_name,
            _resource(request).key_id,
            code,
            started,
        )


def rpc(operation: str) -> Callable[[F], F]:
    """Decorate a servicer method: audit any unrecorded error, then map it to a status."""

    def decorate(method: F) -> F:
        name = method.__qualname__.replace("Servicer.", ".")  # the metrics' rpc label
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def async_method(self: Any, request: Any, context: Any) -> Any:
                recorder: Recorder = self.recorder
                started = time.perf_counter()
                try:
                    check_request(request)
                    response = await method(self, request, context)
                    _request_line(method.__name__, request, context, "OK", started)
                    recorder.metrics.answered(name, started)
                    return response
                except SignerError as exc:
                    error = exc
                except Exception as exc:
                    error = _unexpected(method.__name__, exc)
                if not is_audited(error):
                    await recorder.refuse_async(
                        _caller(context), operation, _resource(request), error
                    )
                _request_line(method.__name__, request, context, error.code.name, started)
                recorder.metrics.refused(name, error, started)
                message = status_message(error.message)
                await context.abort(error.code, message, status_details(error, message))

            return async_method  # type: ignore[return-value]

        @functools.wraps(method)
        def sync_method(self: Any, request: Any, context: Any) -> Any:
            recorder: Recorder = self.recorder
            started = time.perf_counter()
            try:
                check_request(request)
                response = method(self, request, context)
                _request_line(method.__name__, request, context, "OK", started)
                recorder.metrics.answered(name, started)
                return response
            except SignerError as exc:
                error = exc
            except Exception as exc:
                error = _unexpected(method.__name__, exc)
            if not is_audited(error):
                recorder.refuse(_caller(context), operation, _resource(request), error)
            _request_line(method.__name__, request, context, error.code.name, started)
            recorder.metrics.refused(name, error, started)
            message = status_message(error.message)
            context.abort(error.code, message, status_details(error, message))

        return sync_method  # type: ignore[return-value]

    return decorate
