"""google.rpc.Status details: ErrorInfo (a stable reason) on every refusal, RetryInfo on a
rate limit, read by grpcio-status as any gRPC ecosystem client would, and by our client."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from authz_helpers import tuf_payload
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from harness import running_daemon
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc
from signer_client.errors import NotFoundError, PermissionDeniedError, RateLimitedError

POLICY = """
[[rules]]
principals = ["admin", "ci"]
operations = ["create", "read", "sign", "sign-raw"]

[rate_limits]
ci = { rate = 0.5, burst = 2 }
"""


def details(exc: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, float | None]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status trailer"
    info, delay = error_details_pb2.ErrorInfo(), None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return info, delay


def test_status_details(tmp_path: Path) -> None:
    with running_daemon(tmp_path, clients=["admin", "ci"], policy=POLICY) as daemon:
        admin = daemon.client("admin")
        key = admin.create_key("t", role="targets")

        # the ecosystem's reader: RetryInfo and ErrorInfo on RESOURCE_EXHAUSTED
        stub = pb_grpc.SigningServiceStub(daemon.channel("ci"))
        for _ in range(2):
            stub.Sign(pb.SignRequest(key_id=key.key_id, payload=b"raw"), timeout=10)
        with pytest.raises(grpc.RpcError) as limited:
            stub.Sign(pb.SignRequest(key_id=key.key_id, payload=b"raw"), timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, delay = details(limited.value)
        assert (info.reason, info.domain, info.metadata["burst"]) == (
            "RATE_LIMITED",
            "signerd",
            "2",
        )
        assert delay is not None and 0 < delay <= 2.0

        # our client reads the same
        ci = daemon.client("ci")
        with pytest.raises(RateLimitedError) as again:
            ci.sign(key.key_id, b"raw")
        assert again.value.reason == "RATE_LIMITED"
        assert (
            again.value.retry_delay is not None
            and again.value.retry_after == again.value.retry_delay
        )

        # a stable reason for the rollback rule; the code name when nothing more specific
        admin.sign(key.key_id, tuf_payload("targets", version=5))
        with pytest.raises(PermissionDeniedError) as rollback:
            admin.sign(key.key_id, tuf_payload("targets", version=4))
        assert rollback.value.reason == "VERSION_ROLLBACK"
        with pytest.raises(PermissionDeniedError) as fork:
            admin.sign(key.key_id, tuf_payload("targets", version=5, days=20))
        assert fork.value.reason == "VERSION_ALREADY_SIGNED"
        with pytest.raises(NotFoundError) as missing:
            admin.get_key("0" * 64)
        assert missing.value.reason == "NOT_FOUND" and missing.value.retry_delay is None
        assert daemon.health() == 1
