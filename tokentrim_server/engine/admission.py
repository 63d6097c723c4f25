"""Admission control: a cap on running sessions and a KV-cache memory budget shared by all of them.

Each session reserves, at admission, the most KV-cache memory its pipeline can ever hold (see
:func:`tokentrim_server.engine.sizing.session_cache_bytes`), so an admitted session can always run to its
end: the budget is never overcommitted, and a refused session is told which limit it hit. A session that could
never fit the whole budget is refused earlier, by request validation, as an invalid request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

Limit = Literal["max_sessions", "cache_budget"]


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


class Admission:
    """Thread-safe session and memory accounting."""

    def __init__(self, max_sessions: int, cache_budget_bytes: int) -> None:
        if max_sessions <= 0:
            raise ValueError(f"max_sessions must be > 0; got {max_sessions}")
        if cache_budget_bytes <= 0:
            raise ValueError(f"cache_budget_bytes must be > 0; got {cache_budget_bytes}")
        self.max_sessions = max_sessions
        self.cache_budget_bytes = cache_budget_bytes
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
