"""gRPC health that says why it is NOT_SERVING.

The standard ``HealthCheckResponse`` carries a status only. An operator whose daemon
stopped serving because the token refused the PIN (and will not be tried again until
SIGHUP) must not have to read the log to learn that, so a NOT_SERVING answer carries the
reason in the trailing metadata key ``signer-health-reason`` (``grpcurl -v`` shows it;
plain health probes ignore it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health, health_pb2

REASON_KEY = "signer-health-reason"
_REASON_LIMIT = 1000


def printable(text: str) -> str:
    """An ASCII metadata value: gRPC refuses other characters in a text header."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:_REASON_LIMIT]


class ExplainedHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` whose NOT_SERVING answers say why (``reason()``)."""

    def __init__(self, reason: Callable[[], str | None]) -> None:
        super().__init__()
        self._reason = reason

    async def Check(  # gRPC's method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        response = await super().Check(request, context)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            why = self._reason()
            if why:
                context.set_trailing_metadata(((REASON_KEY, printable(why)),))
        return response
