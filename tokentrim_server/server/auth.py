"""Optional bearer-token authentication, as a gRPC server interceptor.

Clients send ``authorization: Bearer <token>`` metadata. Every configured token is compared in constant
time, all of them every time, so neither a token's content nor its position leaks through timing. The
health service is exempt: orchestrators probe it without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

import grpc

from tokentrim_server.server.metrics import ServerMetrics

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Sequence[str], metrics: ServerMetrics) -> None:
        if not tokens:
            raise ValueError("bearer-token authentication needs at least one token")
        self._tokens = [token.encode() for token in tokens]
        self._metrics = metrics

    def authorized(self, header: str | None) -> bool:
        scheme, _, presented = (header or "").partition(" ")
        candidate = presented.strip().encode()
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        return scheme.lower() == "bearer" and any(matches)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.authorized(metadata.get("authorization")):
            return handler
        if handler_call_details.method.endswith("/Generate"):
            self._metrics.sessions_rejected.labels("unauthenticated").inc()
        return _denying(handler)


async def _deny(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (authorization metadata)")


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny, **codec)
    return grpc.unary_unary_rpc_method_handler(_deny, **codec)
