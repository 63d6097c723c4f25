"""The device worker: one thread that runs every model call, so the event loop never blocks on the device.

Sessions are served in submission order. A session submits its next chunk only after its previous one
came back, so it has at most one job queued: first-in first-out is then round robin across sessions, and
no session can starve another however fast it grants credit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DeviceWorker:
    """A single-thread executor with an asyncio face; ``name`` labels its thread in dumps and profiles."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Run ``function(*args)`` on the worker; cancelling the caller does not stop a job already queued."""
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    async def run_timed(self, function: Callable[..., T], *args: object) -> tuple[T, float]:
        """Like :meth:`run`, also returning the seconds the job waited in the queue."""
        submitted = time.perf_counter()

        def timed() -> tuple[T, float]:
            waited = time.perf_counter() - submitted
            return function(*args), waited

        return await self.run(timed)

    def submit(self, function: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``function(*args)`` without waiting (clean-up that must follow a session's in-flight jobs)."""
        return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
