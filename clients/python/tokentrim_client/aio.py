"""The asyncio client: one channel, unary calls with retries, and sessions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_client.connection import Certificates, ChannelSettings, auth_metadata, load_pem
from tokentrim_client.decoding import ReceivedChunk
from tokentrim_client.messages import SessionOptions, start_request
from tokentrim_client.retry import RetryPolicy, call_with_retries
from tokentrim_client.session import AsyncSession, GenerateCall, SessionStats
from tokentrim_client.transport import StreamCall, await_grpc_future


@dataclass
class SessionResult:
    """A whole session collected by ``generate``."""

    started: pb.SessionStarted
    ended: pb.SessionEnded | None
    chunks: list[ReceivedChunk] = field(default_factory=list)
    stats: SessionStats = field(default_factory=SessionStats)

    @property
    def frames(self) -> np.ndarray | None:
        """All frames ``[F, H, W, 3]`` in order, or None for latent output."""
        batches = [chunk.frames for chunk in self.chunks if chunk.frames is not None]
        return np.concatenate(batches) if batches else None


class AsyncClient:
    """Client of a tokentrim server; ``async with AsyncClient(target) as client: ...``.

    ``token`` is sent as ``authorization: Bearer <token>`` on every call (also over insecure channels, for
    local tests). ``root_certificates`` or ``tls=True`` (system roots) make the channel secure;
    ``client_certificate`` and ``client_key`` answer servers that require mutual TLS (PEM bytes or file paths,
    read at once). ``retries`` applies to unary calls and to opening sessions; ``timeout`` bounds unary calls.
    The channel is made on first use and is grpc's threaded one (see ``transport`` for why).
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_certificates: Certificates | None = None,
        retries: RetryPolicy | None = None,
        *,
        client_certificate: Certificates | None = None,
        client_key: Certificates | None = None,
        tls: bool = False,
        timeout: float | None = 30.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.retries = retries if retries is not None else RetryPolicy()
        self.timeout = timeout
        self._metadata = auth_metadata(token)
        self._settings = ChannelSettings(
            target,
            root_certificates=load_pem(root_certificates),
            client_certificate=load_pem(client_certificate),
            client_key=load_pem(client_key),
            tls=tls,
            options=tuple(channel_options),
        )
        self._channel: grpc.Channel | None = None

    async def __aenter__(self) -> AsyncClient:
        self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; sessions still open on it fail with CANCELLED."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.close()

    async def server_info(self) -> pb.GetServerInfoResponse:
        """The server's model, pipelines, plugins with their parameter schemas, and limits."""
        method = pb_grpc.StreamingServiceStub(self._connect()).GetServerInfo
        return await self._unary(method, pb.GetServerInfoRequest(), "GetServerInfo")

    async def health(self, service: str = "") -> bool:
        """True when the standard health service reports ``service`` ("" for the whole server) SERVING."""
        method = health_pb2_grpc.HealthStub(self._connect()).Check
        response = await self._unary(method, health_pb2.HealthCheckRequest(service=service), "health check")
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def session(self, prompt: str, **options: Any) -> AsyncSession:
        """A session, opened by ``async with``; ``options`` are the fields of ``SessionOptions`` (chunks, seed,
        pipeline, pipeline_options, cache_policy, policy_params, hooks, encoding, jpeg_quality, width, height,
        credits)."""
        start = start_request(prompt, SessionOptions(**options))
        return AsyncSession(self._new_generate_call, start, self.retries)

    async def generate(self, prompt: str, **options: Any) -> SessionResult:
        """Run a whole session (``chunks`` must be set, or it runs to the server's limit) and collect it."""
        async with self.session(prompt, **options) as session:
            assert session.started is not None
            result = SessionResult(started=session.started, ended=None, stats=session.stats)
            async for chunk in session:
                result.chunks.append(chunk)
            result.ended = session.ended
        return result

    async def _unary(self, method: grpc.UnaryUnaryMultiCallable, request: Message, what: str) -> Any:
        async def attempt() -> Any:
            return await await_grpc_future(method.future(request, metadata=self._metadata, timeout=self.timeout))

        return await call_with_retries(attempt, self.retries, what)

    def _new_generate_call(self, extra_metadata: tuple[tuple[str, str], ...] = ()) -> GenerateCall:
        # No deadline: a session lasts as long as the caller keeps it.
        return StreamCall(pb_grpc.StreamingServiceStub(self._connect()).Generate, (*self._metadata, *extra_metadata))

    def _connect(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self._settings.open()
        return self._channel
