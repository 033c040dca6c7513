"""signer_api.v1.KeyService."""

from __future__ import annotations

import grpc

from signer.certificates import CertificateIssuer
from signer.identity import principal_from_context
from signer.keys import KeyManager
from signer.service import paging
from signer.service.convert import algorithm_name, key_message, state_name, timestamp
from signer.service.rpc import rpc
from signer_api.v1 import signer_pb2 as pb
from signer_api.v1 import signer_pb2_grpc as pb_grpc


class KeyServicer(pb_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyManager, certificates: CertificateIssuer) -> None:
        self.keys = keys
        self.certificates = certificates
        self.recorder = keys.admin.recorder

    @rpc("create")
    def CreateKey(
        self, request: pb.CreateKeyRequest, context: grpc.ServicerContext
    ) -> pb.CreateKeyResponse:
        principal = principal_from_context(context)
        record = self.keys.create(
            principal,
            request.label,
            algorithm_name(request.algorithm),
            request.role,
            request.repository,
            request.quorum,
        )
        return pb.CreateKeyResponse(key=key_message(record))

    @rpc("read")
    def GetKey(self, request: pb.GetKeyRequest, context: grpc.ServicerContext) -> pb.GetKeyResponse:
        principal = principal_from_context(context)
        return pb.GetKeyResponse(key=key_message(self.keys.get(principal, request.key_id)))

    @rpc("list")
    def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        principal = principal_from_context(context)
        state = state_name(request.state)
        limit = paging.page_size(request.page_size)
        query = (request.role, request.repository, int(request.state))
        after = paging.decode(request.page_token, query)
        records, more = self.keys.list(
            principal, request.role, request.repository, state, after, limit
        )
        token = ""
        if more:
            token = paging.encode((records[-1].created_at, records[-1].key_id), query)
        return pb.ListKeysResponse(keys=[key_message(r) for r in records], next_page_token=token)

    @rpc("retire")
    def RetireKey(
        self, request: pb.RetireKeyRequest, context: grpc.ServicerContext
    ) -> pb.RetireKeyResponse:
        principal = principal_from_context(context)
        return pb.RetireKeyResponse(key=key_message(self.keys.retire(principal, request.key_id)))

    @rpc("destroy")
    def DestroyKey(
        self, request: pb.DestroyKeyRequest, context: grpc.ServicerContext
    ) -> pb.DestroyKeyResponse:
        principal = principal_from_context(context)
        record = self.keys.destroy(principal, request.key_id, request.confirm)
        return pb.DestroyKeyResponse(key=key_message(record))

    @rpc("certify")
    def IssueCertificate(
        self, request: pb.IssueCertificateRequest, context: grpc.ServicerContext
    ) -> pb.IssueCertificateResponse:
        principal = principal_from_context(context)
        issued = self.certificates.issue(
            principal, request.key_id, request.common_name, request.validity_days
        )
        message = key_message(issued.key)
        certificate = pb.Certificate(
            key_id=issued.key.key_id,
            certificate_pem=issued.pem,
            certificate_key_id=issued.certificate_key_id,
            notary_key_id=message.notary_key_id,
            not_before=timestamp(issued.not_before.timestamp()),
            not_after=timestamp(issued.not_after.timestamp()),
        )
        return pb.IssueCertificateResponse(certificate=certificate)
