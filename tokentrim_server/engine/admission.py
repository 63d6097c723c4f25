"""Admission control: a cap on running sessions, a KV-cache memory budget shared by all of them, and (an
operator option) real time.

Each session reserves, at admission, the most KV-cache memory its pipeline can ever hold (see
:func:`tokentrim_server.engine.sizing.session_cache_bytes`), so an admitted session can always run to its
end: the budget is never overcommitted, and a refused session is told which limit it hit. A session that could
never fit the whole budget is refused earlier, by request validation, as an invalid request.

Real-time admission (:class:`RealtimeMeter`): the server measures what a video frame costs it (the device
seconds its chunk was charged, batched or not, plus the seconds of rendering it) over the last chunks
delivered, and so how many frames a second it can produce; a new session is refused while the admitted
sessions and it, each played at the video's frame rate, would need more than that. The estimate is
conservative: it counts the device and render workers' seconds as if they could not overlap, and it measures
the batch sizes the server runs now, not the larger ones one more session may allow. Until chunks have been
measured, and for a session that would run alone, nothing is refused for real time.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

Limit = Literal["max_sessions", "cache_budget", "realtime"]


class AdmissionError(Exception):
    """A session cannot start now; ``limit`` says which limit refused it."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass
class Reservation:
    """An admitted session's share; release it exactly once (:meth:`Admission.release` is idempotent)."""

    cache_bytes: int
    released: bool = False


class RealtimeMeter:
    """The frames a second the server can produce, from the cost of the last ``window`` chunks (thread-safe)."""

    def __init__(self, fps: float, window: int = 64) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0; got {fps}")
        self.fps = fps
        self._chunks: deque[tuple[int, float]] = deque(maxlen=window)  # (video frames, seconds)
        self._lock = threading.Lock()

    def record(self, frames: int, seconds: float) -> None:
        """A delivered chunk of ``frames`` video frames cost ``seconds`` of device and render time."""
        with self._lock:
            self._chunks.append((frames, seconds))

    def capacity_fps(self) -> float | None:
        """Video frames a second the server produces at the measured cost (``None``: nothing measured yet)."""
        with self._lock:
            seconds = sum(cost for _, cost in self._chunks)
            return sum(frames for frames, _ in self._chunks) / seconds if seconds > 0 else None

    def refusal(self, sessions: int) -> str | None:
        """Why ``sessions`` sessions could not all play in real time, or ``None`` when they could."""
        capacity = self.capacity_fps()
        needed = sessions * self.fps
        if sessions <= 1 or capacity is None or needed <= capacity:  # a session alone harms no one
            return None
        return (
            f"real-time admission: {sessions} sessions at {self.fps:g} frames/s need {needed:g} frames/s and the "
            f"server measures {capacity:.1f} frames/s; retry later"
        )


class Admission:
    """Thread-safe session and memory accounting; with ``realtime``, real-time admission too."""

    def __init__(self, max_sessions: int, cache_budget_bytes: int, realtime: RealtimeMeter | None = None) -> None:
        if max_sessions <= 0:
            raise ValueError(f"max_sessions must be > 0; got {max_sessions}")
        if cache_budget_bytes <= 0:
            raise ValueError(f"cache_budget_bytes must be > 0; got {cache_budget_bytes}")
        self.max_sessions = max_sessions
        self.cache_budget_bytes = cache_budget_bytes
        self.realtime = realtime
        self._lock = threading.Lock()
        self._sessions = 0
        self._reserved = 0

    @property
    def sessions(self) -> int:
        return self._sessions

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    def admit(self, cache_bytes: int) -> Reservation:
        with self._lock:
            if self._sessions >= self.max_sessions:
                raise AdmissionError(
                    "max_sessions", f"the server is running its maximum of {self.max_sessions} sessions; retry later"
                )
            if self._reserved + cache_bytes > self.cache_budget_bytes:
                free = self.cache_budget_bytes - self._reserved
                raise AdmissionError(
                    "cache_budget",
                    f"the KV-cache budget is used up: the session needs {cache_bytes} bytes, {free} of "
                    f"{self.cache_budget_bytes} are free; retry later",
                )
            refusal = self.realtime.refusal(self._sessions + 1) if self.realtime is not None else None
            if refusal is not None:
                raise AdmissionError("realtime", refusal)
            self._sessions += 1
            self._reserved += cache_bytes
            return Reservation(cache_bytes)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation.released:
                return
            reservation.released = True
            self._sessions -= 1
            self._reserved -= reservation.cache_bytes
