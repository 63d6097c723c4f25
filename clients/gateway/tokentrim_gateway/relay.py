"""One server session relayed to one viewer: chunks into the playout buffer, telemetry onto the data channel.

Flow control rides on tokentrim_client's credit rule: a session returns one credit each time the caller takes a
chunk, so the server runs at most ``credits`` chunks ahead of what the gateway took. The relay takes the next chunk
only while the playout buffer holds less than ``buffer_chunks`` chunks of frames, and the buffer drains at the
session's frame rate; so the server is paced by playback, and a viewer never makes it run ahead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim_client import AsyncClient, AsyncSession, ClientError, ReceivedChunk

from tokentrim_gateway.config import GatewayConfig
from tokentrim_gateway.metrics import GatewayMetrics
from tokentrim_gateway.playout import PlayoutTrack
from tokentrim_gateway.recording import Recording
from tokentrim_gateway.requests import InputError, StartRequest

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]

END_REASONS = {
    pb.END_REASON_COMPLETED: "completed",
    pb.END_REASON_STOPPED: "stopped",
    pb.END_REASON_LENGTH_LIMIT: "length_limit",
}


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def internal_error(what: str) -> dict[str, Any]:
    """Log the current exception under an id and say only the id to the page, as the server does."""
    error_id = secrets.token_hex(6)
    log.exception("%s (error id %s)", what, error_id)
    return error_message("INTERNAL", f"gateway: {what} (error id {error_id}; the gateway's log has the details)")


def chunk_message(chunk: ReceivedChunk, elapsed: float, buffered: int) -> dict[str, Any]:
    """The chart's per-chunk record: the server's cache report and timings as they came, plus the playout state."""
    return {
        "type": "chunk",
        "index": chunk.index,
        "first_frame": chunk.first_frame,
        "frame_count": chunk.frame_count,
        "prompt_version": chunk.prompt_version,
        "received_seconds": round(elapsed, 4),
        "buffered_frames": buffered,
        "report": chunk.report,
        "timings": chunk.timings,
    }


class SessionRelay:
    """Run with ``await relay.run()`` (as a task: cancelling it cancels the gRPC call, and the server frees the
    session at once); ``change_prompt`` and ``stop`` come from the page while it runs."""

    def __init__(self, client: AsyncClient, config: GatewayConfig, request: StartRequest, track: PlayoutTrack,
                 send: Send, metrics: GatewayMetrics, recording: Path | None) -> None:
        self._client = client
        self._config = config
        self._request = request
        self._track = track
        self._send = send
        self._metrics = metrics
        self._recording = recording
        self._session: AsyncSession | None = None
        self.recorded_frames = 0

    async def change_prompt(self, prompt: str) -> None:
        if self._session is None:
            raise InputError("prompt: no session has started yet")
        await self._session.change_prompt(prompt)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.stop()

    async def run(self) -> None:
        ended: pb.SessionEnded | None = None
        reason = "error"
        try:
            ended = await self._relay()
            reason = END_REASONS.get(ended.reason, "completed") if ended is not None else "cancelled"
        except InputError as error:
            self._send(error_message("INVALID_ARGUMENT", str(error)))
        except ClientError as error:
            self._send(error_message(error.code.name, error.details))
        except asyncio.CancelledError:
            reason = "cancelled"  # the viewer left or started another session: nobody to tell
            raise
        except Exception:
            self._send(internal_error("relaying the session failed"))
        finally:
            self._track.finish()
            self._metrics.sessions_ended.labels(reason).inc()
        self._send({
            "type": "ended", "reason": reason, "message": ended.message if ended else "",
            "chunks": ended.chunks if ended else 0, "frames": ended.frames if ended else 0,
            "recording": self.recorded_frames > 0,
        })

    def _open(self) -> AsyncSession:
        options = {**self._request.options, "encoding": "jpeg", "jpeg_quality": self._config.jpeg_quality,
                   "credits": self._config.credits}
        try:
            return self._client.session(self._request.prompt, **options)
        except (TypeError, ValueError) as error:  # a value protobuf cannot hold, e.g. chunks beyond uint32
            raise InputError(f"request: {error}") from None

    async def _relay(self) -> pb.SessionEnded | None:
        """The server's ``ended``, or None when the session was closed before it came."""
        async with self._open() as session:
            self._session = session
            started = session.started
            assert started is not None
            opened = time.monotonic()
            self._metrics.sessions_active.inc()
            try:
                self._track.begin(started.frames_per_second)
                self._send({
                    "type": "started", "session_id": started.session_id, "model": started.model,
                    "pipeline": started.pipeline, "cache_policy": started.cache_policy, "width": started.width,
                    "height": started.height, "frames_per_second": started.frames_per_second,
                    "seed": str(started.seed), "chunks": started.chunks, "credits": started.credits,
                })
                recording = Recording(self._recording, started.frames_per_second) if self._recording else None
                try:
                    await self._pump(session, recording, opened)
                finally:
                    if recording is not None:
                        await recording.close()
            finally:
                self._metrics.sessions_active.dec()
            return session.ended

    async def _pump(self, session: AsyncSession, recording: Recording | None, opened: float) -> None:
        frames_per_chunk = 0
        while True:
            if frames_per_chunk:
                await self._track.wait_below(math.ceil(self._config.buffer_chunks * frames_per_chunk))
            chunk = await session.next_chunk()  # takes the chunk and returns the server a credit
            if chunk is None:
                return
            if chunk.frames is None:  # only latent output has none, and the gateway asks for JPEG
                raise ClientError(grpc.StatusCode.INTERNAL, "protocol error: a chunk without frames")
            frames_per_chunk = max(frames_per_chunk, chunk.frame_count)
            self._track.push(chunk.frames)
            self._send(chunk_message(chunk, time.monotonic() - opened, self._track.buffered))
            if recording is not None:
                await recording.write(chunk.frames)
                self.recorded_frames = recording.frames
