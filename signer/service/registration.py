"""Mount a servicer on a server from its service descriptor.

Unlike the generated ``add_*_to_server`` helpers, a request whose bytes do not parse
reaches the handler as ``Malformed`` and is answered INVALID_ARGUMENT (not INTERNAL).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from signer.service.errors import Malformed


def _tolerant(message_class: Any) -> Any:
    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Malformed(exc)

    return deserialize


def add_service(server: Any, servicer: Any, service: ServiceDescriptor) -> None:
    """Register every unary-unary method of ``service`` implemented by ``servicer``."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{method.full_name}: only unary methods are mounted here")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
