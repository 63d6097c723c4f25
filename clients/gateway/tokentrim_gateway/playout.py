"""The viewer's video track: a playout buffer of decoded frames, handed to the WebRTC sender at the session's rate.

aiortc pulls frames with ``recv()`` as fast as it can encode them; pacing them is the track's job. Frames are due
on a wall clock at ``1 / fps`` apart and stamped with that clock (90 kHz RTP time), so the browser plays them at the
session's rate whatever the chunks' arrival pattern. The relay fills the buffer chunk by chunk and takes the next
chunk only while the buffer holds less than its target, which is what keeps the server from running ahead.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tokentrim_gateway.metrics import GatewayMetrics

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class PlayoutTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, metrics: GatewayMetrics, on_stall: Callable[[], None]) -> None:
        super().__init__()
        self._metrics = metrics
        self._on_stall = on_stall
        self._frames: deque[np.ndarray] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._interval = 1 / 16
        self._next_due: float | None = None  # loop time the next frame is due; None: start when one arrives
        self._origin: float | None = None  # loop time of pts 0
        self._live = False

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def begin(self, fps: float) -> None:
        """A session starts: frames are due every ``1 / fps`` s from its first frame on."""
        self.discard()
        self._interval = 1 / fps
        self._next_due = None
        self._live = True

    def finish(self) -> None:
        """The session delivered its last chunk: the buffer plays out, and running empty is no longer a stall."""
        self._live = False

    def discard(self) -> None:
        """Drop what is buffered (the session was cancelled or replaced)."""
        if self._frames:
            self._metrics.frames_dropped.labels("discarded").inc(len(self._frames))
            self._frames.clear()
        self._live = False
        self._taken.set()

    def push(self, frames: np.ndarray) -> None:
        """Queue a chunk's frames, ``uint8 [F, H, W, 3]``."""
        self._frames.extend(frames)
        self._arrived.set()

    async def wait_below(self, frames: int) -> None:
        """Return once fewer than ``frames`` frames are buffered."""
        while len(self._frames) >= frames:
            self._taken.clear()
            await self._taken.wait()

    def stop(self) -> None:
        super().stop()
        self._arrived.set()  # wake a recv() waiting for frames, which then raises
        self._taken.set()

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            if self._live and self._next_due is not None:
                self._metrics.stalls.inc()
                self._on_stall()
            # After an idle or a stall, the clock restarts at the next frame: no burst to catch up.
            self._next_due = None
            self._arrived.clear()
            await self._arrived.wait()
        now = loop.time()
        if self._next_due is None:
            self._next_due = now
        if self._origin is None:
            self._origin = now
        # More than a frame behind (the encoder could not keep up): skip the frames whose time has passed, but
        # always show the newest, so the picture stays live rather than the delay growing.
        while self._next_due + self._interval <= now and len(self._frames) > 1:
            self._frames.popleft()
            self._metrics.frames_dropped.labels("late").inc()
            self._next_due += self._interval
        if self._next_due > now:
            await asyncio.sleep(self._next_due - now)
        if not self._frames:  # discarded while we slept
            return await self.recv()
        image = self._frames.popleft()
        self._taken.set()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = round((self._next_due - self._origin) * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        self._next_due += self._interval
        self._metrics.frames_sent.inc()
        return frame
