"""An in-process fake of tokentrim-server for the client tests: StreamingService and the health service on
127.0.0.1, with scripted failures, credit accounting and a record of everything each session received.

It runs on its own thread and event loop so that the async client, the blocking client and a CLI subprocess
can all talk to it from the test's thread.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections import deque
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from PIL import Image
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

FPS = 16.0
DEFAULT_CREDITS = 2


def unused_port() -> int:
    """A local port nothing listens on (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expected_rgb(index: int, frames: int, height: int, width: int) -> np.ndarray:
    """The frames the fake sends for chunk ``index``: each frame one flat colour, so JPEG keeps it nearly exact."""
    values = np.arange(index * frames, (index + 1) * frames, dtype=np.int64)
    colours = np.stack([values * 40 % 256, values * 70 % 256, 255 - values * 30 % 256], axis=-1).astype(np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (frames, height, width, 3)).copy()


def expected_latents(index: int, frames: int) -> np.ndarray:
    return (np.arange(frames * 4 * 3 * 5, dtype=np.float32).reshape(frames, 4, 3, 5) + index).astype(np.float32)


@dataclass
class SessionRecord:
    """What one Generate call saw."""

    metadata: dict[str, str]
    start: pb.StartSession | None = None
    initial_credits: int = 0
    grants: list[int] = field(default_factory=list)
    prompt_changes: list[str] = field(default_factory=list)
    stop_received: bool = False
    chunks_sent: int = 0
    max_credit: int = 0  # the most credit outstanding at once
    cancelled: bool = False


class FakeStreamingService(pb_grpc.StreamingServiceServicer):
    def __init__(self) -> None:
        self.failures: deque[tuple[grpc.StatusCode, str]] = deque()  # next calls end with these
        self.fail_after_chunks: tuple[int, grpc.StatusCode, str] | None = None
        self.required_token: str | None = None
        self.chunk_delay = 0.0
        self.frames_per_chunk = 3
        self.height, self.width = 24, 32
        self.ignore_stop = False
        self.sessions: list[SessionRecord] = []
        self.info_metadata: list[dict[str, str]] = []

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext):
        self.info_metadata.append(dict(context.invocation_metadata()))
        await self._gate(context)
        return pb.GetServerInfoResponse(model="fake", default_pipeline="self_forcing", frames_per_second=FPS)

    async def Generate(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        record = SessionRecord(metadata=dict(context.invocation_metadata()))
        self.sessions.append(record)
        await self._gate(context)
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("request") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        start = record.start = first.start
        if not start.prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start.prompt: must not be empty")
        height, width = start.height or self.height, start.width or self.width
        credit = record.initial_credits = record.max_credit = start.initial_credits or DEFAULT_CREDITS
        state = _SessionState(credit)
        reader = asyncio.create_task(self._read_requests(context, record, state))
        try:
            await context.write(_started(start, height, width, credit))
            await self._send_chunks(context, record, state, start, height, width)
        except asyncio.CancelledError:  # grpc cancels the handler when the client cancels or goes away
            record.cancelled = True
            raise
        finally:
            reader.cancel()

    async def _send_chunks(self, context, record, state, start, height, width) -> None:
        index = 0
        while not start.chunks or index < start.chunks:
            async with state.changed:
                await state.changed.wait_for(lambda: state.credit > 0 or state.stopped)
                if state.stopped:
                    break
                state.credit -= 1
                version = len(record.prompt_changes)  # changes received so far apply from this chunk on
            if self.fail_after_chunks and index == self.fail_after_chunks[0]:
                await context.abort(self.fail_after_chunks[1], self.fail_after_chunks[2])
            await asyncio.sleep(self.chunk_delay)
            await context.write(pb.GenerateResponse(chunk=self._chunk(index, start, height, width, version)))
            record.chunks_sent += 1
            index += 1
        reason = pb.END_REASON_STOPPED if state.stopped else pb.END_REASON_COMPLETED
        frames = index * self.frames_per_chunk
        await context.write(pb.GenerateResponse(ended=pb.SessionEnded(reason=reason, chunks=index, frames=frames)))

    async def _read_requests(self, context, record: SessionRecord, state: _SessionState) -> None:
        while (request := await context.read()) is not grpc.aio.EOF:
            kind = request.WhichOneof("request")
            async with state.changed:
                if kind == "grant_credits":
                    record.grants.append(request.grant_credits.chunks)
                    state.credit += request.grant_credits.chunks
                    record.max_credit = max(record.max_credit, state.credit)
                elif kind == "change_prompt":
                    record.prompt_changes.append(request.change_prompt.prompt)
                elif kind == "stop":
                    record.stop_received = True
                    state.stopped = not self.ignore_stop
                state.changed.notify_all()

    def _chunk(self, index: int, start: pb.StartSession, height: int, width: int, version: int) -> pb.Chunk:
        count = self.frames_per_chunk
        chunk = pb.Chunk(
            index=index,
            first_frame=index * count,
            frame_count=count,
            encoding=start.output.encoding or pb.ENCODING_JPEG,
            timings=pb.ChunkTimings(denoise_seconds=0.5, decode_seconds=0.25),
            cache_report=pb.CacheReport(policy="fake", triggered=index % 2 == 1, tokens_removed=10 * index),
            prompt_version=version,
        )
        if index % 2 == 1:
            chunk.cache_report.severity = 0.75
        if index == 0:
            chunk.hook_reports.add(name="flowmo", seconds=0.1, values={"loss_before": 2.0})
        frames = expected_rgb(index, count, height, width)
        if chunk.encoding == pb.ENCODING_RAW_RGB:
            chunk.rgb = frames.tobytes()
        elif chunk.encoding == pb.ENCODING_LATENTS:
            latents = expected_latents(index, count)
            chunk.latents.CopyFrom(pb.Tensor(shape=latents.shape, dtype="float32", data=latents.tobytes()))
        else:
            chunk.jpeg_frames.extend(_jpeg(frame, start.output.jpeg_quality or 90) for frame in frames)
        return chunk

    async def _gate(self, context: grpc.aio.ServicerContext) -> None:
        """Auth, then the scripted failures, as a real server's interceptor and admission would."""
        authorization = dict(context.invocation_metadata()).get("authorization")
        if self.required_token is not None and authorization != f"Bearer {self.required_token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if self.failures:
            code, message = self.failures.popleft()
            await context.abort(code, message)


class _SessionState:
    def __init__(self, credit: int) -> None:
        self.credit = credit
        self.stopped = False
        self.changed = asyncio.Condition()


def _started(start: pb.StartSession, height: int, width: int, credit: int) -> pb.GenerateResponse:
    started = pb.SessionStarted(
        session_id="fake-1",
        model="fake",
        pipeline=start.pipeline or "self_forcing",
        height=height,
        width=width,
        frames_per_second=FPS,
        seed=start.seed if start.HasField("seed") else 7,
        chunks=start.chunks,
        cache_policy=start.cache_policy.name or "none",
        credits=credit,
    )
    return pb.GenerateResponse(started=started)


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class FakeServer:
    """The fake service and a health service served on 127.0.0.1:<free port> from a private thread."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.service = FakeStreamingService()
        self.health = health_aio.HealthServicer()
        self._credentials = credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-server", daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(grace=None), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        asyncio.run_coroutine_threadsafe(self.health.set("", status), self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_StreamingServiceServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if self._credentials is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self._server.add_secure_port("127.0.0.1:0", self._credentials)
        await self._server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
