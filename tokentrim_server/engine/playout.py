"""A session's playout clock: a simulated viewer playing the stream at its frame rate after a pre-buffer.

The viewer starts playing ``prebuffer_seconds`` after the first chunk arrives and then plays ``fps`` frames a
second. A chunk that arrives after the viewer reached its first frame makes the viewer *stall* (rebuffer)
until it arrives: playback resumes from there, so every later frame is due that much later. A chunk is a
*deadline miss* when it arrives after its frame's time on the session's fixed clock (first chunk's arrival
+ pre-buffer + frame / fps), with no allowance for earlier stalls: what a viewer that skips late frames
instead of waiting (a live broadcast) would lose.

*Slack* is how far the stream is ahead of the viewer: the time the next frame to produce is due, minus now
(negative: the viewer is, or will be, waiting for it). The scheduler runs the session with the least slack
first. Before the first chunk a session has no viewer yet; its slack is minus the time it has waited, so a
new session is served ahead of streams with a buffer, and before streams that stall less than it waited.

Frames count video frames (a client taking latents decodes them into as many).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PlayoutTiming:
    """What the simulated viewer saw of one chunk."""

    frames: int  # video frames in the chunk
    slack_seconds: float  # its first frame's due time minus its arrival (negative: the viewer waited)
    stall_seconds: float  # how long the viewer stalled waiting for it (0: none)
    deadline_missed: bool  # later than its frame's time on the fixed clock


class PlayoutClock:
    """One session's simulated viewer; thread-safe (the scheduler reads :meth:`slack` on the device worker)."""

    def __init__(
        self, fps: float, prebuffer_seconds: float, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0; got {fps}")
        if prebuffer_seconds < 0:
            raise ValueError(f"prebuffer_seconds must be >= 0; got {prebuffer_seconds}")
        self.fps = fps
        self.prebuffer_seconds = prebuffer_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.opened = clock()
        self._waiting_since = self.opened  # for the first chunk of a playback
        self._first_arrival: float | None = None
        self._base_frame = 0  # the frame playback started from (0, or where a resumed client started again)
        self._playback_stalled = 0.0  # stall seconds since playback started
        self.frames_produced = 0  # frames of the chunks stepped so far
        self.frames_delivered = 0
        self.stalls = 0
        self.stall_seconds = 0.0
        self.deadline_misses = 0

    def produced(self, frames: int) -> None:
        """A chunk of ``frames`` frames was stepped (it will reach the viewer after rendering)."""
        with self._lock:
            self.frames_produced += frames

    def slack(self) -> float:
        """Seconds until the viewer needs the next frame to produce (negative: behind)."""
        with self._lock:
            now = self._clock()
            if self._first_arrival is None:
                return self._waiting_since - now
            return self._due(self.frames_produced, self._playback_stalled) - now

    def deliver(self, frames: int) -> PlayoutTiming:
        """The viewer receives the next chunk, of ``frames`` frames, now."""
        with self._lock:
            now = self._clock()
            if self._first_arrival is None:
                self._first_arrival = now
            due = self._due(self.frames_delivered, self._playback_stalled)
            stall = max(0.0, now - due)
            missed = now > self._due(self.frames_delivered, 0.0)
            self.stalls += stall > 0
            self.stall_seconds += stall
            self._playback_stalled += stall
            self.deadline_misses += missed
            self.frames_delivered += frames
            return PlayoutTiming(frames, due - now, stall, missed)

    def restart(self) -> None:
        """A new client takes over (a resume): it buffers and starts playing again from the next chunk."""
        with self._lock:
            self._first_arrival = None
            self._base_frame = self.frames_delivered
            self._playback_stalled = 0.0
            self._waiting_since = self._clock()

    def realtime_factor(self) -> float:
        """Seconds of video delivered per second since the session opened (>= 1: it keeps up with real time;
        time a session was held without a client counts)."""
        with self._lock:
            elapsed = self._clock() - self.opened
            return self.frames_delivered / self.fps / elapsed if elapsed > 0 else 0.0

    def _due(self, frame: int, stalled: float) -> float:
        assert self._first_arrival is not None
        return self._first_arrival + self.prebuffer_seconds + stalled + (frame - self._base_frame) / self.fps
