"""signer.v1.KeyService."""

from __future__ import annotations

import grpc

from signer.identity import principal_from_context
from signer.keys import KeyManager
from signer.service.convert import algorithm_name, key_message, state_name
from signer.service.rpc import rpc
from signer.v1 import signer_pb2 as pb
from signer.v1 import signer_pb2_grpc as pb_grpc


class KeyServicer(pb_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys
        self.recorder = keys.admin.recorder

    @rpc("create")
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.Key:
        principal = principal_from_context(context)
        record = self.keys.create(
            principal,
            request.label,
            algorithm_name(request.algorithm),
            request.role,
            request.repository,
            request.quorum,
        )
        return key_message(record)

    @rpc("read")
    def GetKey(self, request: pb.GetKeyRequest, context: grpc.ServicerContext) -> pb.Key:
        principal = principal_from_context(context)
        return key_message(self.keys.get(principal, request.key_id))

    @rpc("list")
    def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        principal = principal_from_context(context)
        records = self.keys.list(
            principal, request.role, request.repository, state_name(request.state)
        )
        return pb.ListKeysResponse(keys=[key_message(r) for r in records])

    @rpc("retire")
    def RetireKey(self, request: pb.RetireKeyRequest, context: grpc.ServicerContext) -> pb.Key:
        principal = principal_from_context(context)
        return key_message(self.keys.retire(principal, request.key_id))

    @rpc("destroy")
    def DestroyKey(self, request: pb.DestroyKeyRequest, context: grpc.ServicerContext) -> pb.Key:
        principal = principal_from_context(context)
        return key_message(self.keys.destroy(principal, request.key_id, request.confirm))
