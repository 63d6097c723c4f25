"""One browser: its WebRTC peer connection (a video track out, a data channel both ways) and its current session.

The page drives sessions over the data channel named ``control``:

- page to gateway: ``{"type": "start", "prompt", "pipeline", "pipeline_options", "cache_policy", "policy_params",
  "hooks", "chunks", "seed", "width", "height"}``, ``{"type": "prompt", "prompt"}``, ``{"type": "stop"}``;
- gateway to page: ``started``, one ``chunk`` per chunk (the chart's telemetry), ``stall``, ``ended`` and
  ``error`` (the server's gRPC code and message, or the gateway's for a malformed message).

A viewer that goes away (the page closed, its network gone) ends its session: the data channel closing, the peer
connection failing or the page's unload beacon cancel the gRPC call, and the server frees the session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from tokentrim_client import AsyncClient, ClientError

from tokentrim_gateway.config import GatewayConfig
from tokentrim_gateway.metrics import GatewayMetrics
from tokentrim_gateway.playout import PlayoutTrack
from tokentrim_gateway.relay import SessionRelay, error_message, internal_error
from tokentrim_gateway.requests import MAX_MESSAGE_BYTES, InputError, parse_prompt, parse_start

log = logging.getLogger(__name__)

CONTROL_CHANNEL = "control"


class Viewer:
    def __init__(self, viewer_id: str, client: AsyncClient, config: GatewayConfig, metrics: GatewayMetrics,
                 recordings: Path | None, on_closed: Callable[[Viewer], None]) -> None:
        self.id = viewer_id
        self._on_closed = on_closed
        self._client = client
        self._config = config
        self._metrics = metrics
        self.recording = recordings / f"{viewer_id}.mp4" if recordings is not None else None
        ice = [RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)
               for server in config.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.track = PlayoutTrack(metrics, on_stall=self._stalled)
        self._channel: RTCDataChannel | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())
        self._relay: SessionRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        metrics.viewers.inc()

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """The answer to the page's offer, with every host candidate in it (aiortc gathers before answering)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    @property
    def session_running(self) -> bool:
        return self._relay_task is not None and not self._relay_task.done()

    def send(self, message: dict[str, Any]) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(message))

    def close(self) -> asyncio.Task[None]:
        """End the session (cancelling its gRPC call) and the peer connection; safe to call more than once."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        return self._closing

    async def _close(self) -> None:
        await self._cancel_session()
        self._worker.cancel()
        self.track.stop()
        await self.pc.close()
        if self.recording is not None:
            self.recording.unlink(missing_ok=True)
        self._metrics.viewers.dec()
        self._on_closed(self)
        self.closed.set()
        log.info("viewer %s left", self.id)

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_CHANNEL:
            return
        self._channel = channel
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", self.close)

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close()

    def _stalled(self) -> None:
        self.send({"type": "stall", "buffered_frames": 0})

    async def _work(self) -> None:
        """Handle the page's messages one at a time, in order."""
        while True:
            raw = await self._inbox.get()
            try:
                await self._handle(raw)
            except InputError as error:
                self.send(error_message("INVALID_ARGUMENT", str(error)))
            except ClientError as error:
                self.send(error_message(error.code.name, error.details))
            except Exception:
                self.send(internal_error("handling a page message failed"))

    async def _handle(self, raw: Any) -> None:
        if not isinstance(raw, str) or len(raw) > MAX_MESSAGE_BYTES:
            raise InputError(f"message: must be a JSON text of at most {MAX_MESSAGE_BYTES} bytes")
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InputError(f"message: not JSON ({error.msg})") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            request = parse_start(message)
            await self._cancel_session()
            if self.recording is not None:
                self.recording.unlink(missing_ok=True)
            self._relay = SessionRelay(self._client, self._config, request, self.track, self.send, self._metrics,
                                       self.recording)
            self._relay_task = asyncio.create_task(self._relay.run())
        elif kind == "prompt":
            prompt = parse_prompt(message)
            if not self.session_running or self._relay is None:
                raise InputError("prompt: no session is running")
            await self._relay.change_prompt(prompt)
        elif kind == "stop":
            if self.session_running and self._relay is not None:
                await self._relay.stop()
        else:
            raise InputError(f"type: must be start, prompt or stop; got {kind!r}")

    async def _cancel_session(self) -> None:
        if self._relay_task is not None and not self._relay_task.done():
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        self.track.discard()
