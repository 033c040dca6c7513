"""signer_api.v1.SigningService."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from signer.errors import InvalidArgument, SignerError
from signer.identity import principal_from_context
from signer.pipeline import Pipeline, SignInput
from signer.quorum import QuorumService, RequestState, SignatureRequest
from signer.service.errors import status_message
from signer.service.rpc import rpc
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc

_OK = pb.ItemStatus(code=0)


class SigningServicer(pb_grpc.SigningServiceServicer):
    def __init__(self, pipeline: Pipeline, quorum: QuorumService, max_batch_items: int) -> None:
        self.pipeline = pipeline
        self.quorum = quorum
        self.recorder = pipeline.recorder
        self.max_batch_items = max_batch_items

    # Sign and SignBatch are the hot path: coroutines on the server's event loop. The other
    # methods are plain functions, run in the server's thread pool.

    @rpc("sign")
    async def Sign(self, request: pb.SignRequest, context: Any) -> pb.SignResponse:
        principal = principal_from_context(context)
        item = _input(request.key_id, request, request.request_id)
        (signed,) = await self.pipeline.sign(principal, [item])
        if isinstance(signed, SignerError):
            raise signed
        return pb.SignResponse(
            key_id=signed.key_id, signature=signed.signature, scheme=signed.scheme
        )

    @rpc("sign")
    async def SignBatch(self, request: pb.SignBatchRequest, context: Any) -> pb.SignBatchResponse:
        principal = principal_from_context(context)
        if not request.items:
            raise InvalidArgument("items is empty")
        if len(request.items) > self.max_batch_items:
            raise InvalidArgument(
                f"{len(request.items)} items; a batch holds at most {self.max_batch_items}"
            )
        inputs = [_input(item.key_id or request.key_id, item) for item in request.items]
        response = pb.SignBatchResponse()
        add = response.results.add  # in place: no result message built, then copied
        for outcome in await self.pipeline.sign(principal, inputs):
            if isinstance(outcome, SignerError):
                status = pb.ItemStatus(
                    code=outcome.code.value[0], message=status_message(outcome.message)
                )
                add(status=status)
            else:
                add(
                    status=_OK,
                    key_id=outcome.key_id,
                    signature=outcome.signature,
                    scheme=outcome.scheme,
                )
        return response

    # -- quorum keys: RequestSignature -> Approve (x M) -> Sign(request_id) -------------------

    @rpc("request-signature")
    def RequestSignature(
        self, request: pb.RequestSignatureRequest, context: grpc.ServicerContext
    ) -> pb.RequestSignatureResponse:
        principal = principal_from_context(context)
        made = self.quorum.request(
            principal, request.key_id, request.payload, request.reason, request.role
        )
        return pb.RequestSignatureResponse(signature_request=request_message(made))

    @rpc("approve")
    def Approve(
        self, request: pb.ApproveRequest, context: grpc.ServicerContext
    ) -> pb.ApproveResponse:
        principal = principal_from_context(context)
        approved = self.quorum.approve(principal, request.request_id, request.payload_sha256)
        return pb.ApproveResponse(signature_request=request_message(approved))

    @rpc("get-request")
    def GetSignatureRequest(
        self, request: pb.GetSignatureRequestRequest, context: grpc.ServicerContext
    ) -> pb.GetSignatureRequestResponse:
        principal = principal_from_context(context)
        found = self.quorum.get(principal, request.request_id)
        return pb.GetSignatureRequestResponse(signature_request=request_message(found))


_STATES = {
    RequestState.PENDING: pb.SIGNATURE_REQUEST_STATE_PENDING,
    RequestState.APPROVED: pb.SIGNATURE_REQUEST_STATE_APPROVED,
    RequestState.FULFILLED: pb.SIGNATURE_REQUEST_STATE_FULFILLED,
    RequestState.EXPIRED: pb.SIGNATURE_REQUEST_STATE_EXPIRED,
}


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def request_message(request: SignatureRequest) -> pb.SignatureRequest:
    return pb.SignatureRequest(
        request_id=request.request_id,
        key_id=request.key_id,
        payload_sha256=request.payload_sha256,
        requester=request.requester,
        approvers=list(request.approvers),
        approvals_required=request.approvals_required,
        state=_STATES[request.state],  # type: ignore[arg-type]
        created_at=_timestamp(request.created_at),
        expires_at=_timestamp(request.expires_at),
        reason=request.reason,
        payload=request.payload,
    )


def _input(
    key_id: str, message: pb.SignRequest | pb.SignBatchItem, request_id: str = ""
) -> SignInput:
    content = message.WhichOneof("content")  # positional below: made per batch item
    if content == "digest":
        return SignInput(key_id, None, message.digest, request_id, "tuf", "", message.role)
    payload = message.payload if content == "payload" else None
    return SignInput(key_id, payload, None, request_id, "tuf", "", message.role)
