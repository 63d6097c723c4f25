"""Registering the streaming service with decoders that never raise inside gRPC.

gRPC's asyncio server handles a request that its deserializer cannot parse badly: a unary call ends as
UNKNOWN with the exception's text and a server traceback per call, and a streaming call silently stops
delivering messages while the call stays open (its session would hold its slot and KV reservation until
the client's deadline). So the service is registered with deserializers that return an :class:`Undecodable`
marker instead of raising; the handlers answer it as INVALID_ARGUMENT naming the field ``request``.

The method table is read from the proto descriptor, so a method added to the ``.proto`` is registered here
without a second list to keep in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass


@dataclass(frozen=True)
class Undecodable:
    """A client message that is not a valid ``message_type``; ``size`` is its length in bytes."""

    message_type: str
    size: int

    def describe(self) -> str:
        return f"a {self.size}-byte message could not be decoded as {self.message_type}"


def tolerant_deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """``message_class.FromString`` that returns :class:`Undecodable` where parsing fails."""
    full_name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Undecodable(full_name, len(data))

    return deserialize


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_tolerant_service(servicer: object, service: ServiceDescriptor, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s methods of ``service`` (one method per RPC, same names) on ``server``."""
    handlers = {}
    for method in service.methods:
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=tolerant_deserializer(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
