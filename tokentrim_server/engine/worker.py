"""The device worker: one thread that runs every model call, so the event loop never blocks on the device.

Jobs carry an owner (a session). The worker runs them by start-time fair queuing over the device time each
owner has used, not first in first out: a session whose chunks are expensive (many denoising steps, a
hook's optimisation, regenerations) gets the same share of the device as a cheap one, not the same number
of chunks, so it cannot starve the others. Each owner has a virtual finish time ``F`` (the device seconds
it has used, measured on the worker); a job queued by owner ``o`` gets the start tag ``max(F_o, V)``, where
``V`` is the start tag of the job last picked, so an owner that sat idle cannot bank its unused share and
then monopolise the device. The queued job with the smallest tag runs next (ties: first submitted). Jobs
of one owner run in submission order, which the sessions' clean-up relies on. A running job is never
interrupted: another session waits at most one chunk of an expensive session. Clean-up jobs are *urgent*:
they start at the current virtual time, so a finished session frees its memory and its slot as soon as its
own earlier jobs are done, however much device time it had used.

On CUDA the measured time is the host's wall time of the job, which includes the device time wherever
the job synchronises (a policy's ``.item()``, a chunk's end); that is the cost the other sessions wait for.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Job:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any]
    owner: Hashable
    sequence: int
    urgent: bool
    tag: float = 0.0


@dataclass
class _Owner:
    finish: float = 0.0  # virtual finish time: the owner's start tag plus the device seconds its jobs took
    queue: deque[_Job] = field(default_factory=deque)
    running: bool = False


class DeviceWorker:
    """A single-thread, fair-queuing executor with an asyncio face; ``name`` labels its thread.

    ``clock`` measures a job's cost (injectable for tests).
    """

    def __init__(self, name: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._owners: dict[Hashable, _Owner] = {}
        self._virtual_time = 0.0
        self._sequence = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, function: Callable[..., T], *args: object, owner: Hashable = None) -> T:
        """Run ``function(*args)`` on the worker; cancelling the caller does not stop a job already queued."""
        return await asyncio.wrap_future(self.submit(function, *args, owner=owner))

    async def run_timed(self, function: Callable[..., T], *args: object, owner: Hashable = None) -> tuple[T, float]:
        """Like :meth:`run`, also returning the seconds the job waited in the queue."""
        submitted = time.perf_counter()

        def timed() -> tuple[T, float]:
            waited = time.perf_counter() - submitted
            return function(*args), waited

        return await self.run(timed, owner=owner)

    def submit(
        self, function: Callable[..., T], *args: object, owner: Hashable = None, urgent: bool = False
    ) -> Future[T]:
        """Queue ``function(*args)`` for ``owner`` without waiting (``None`` is an owner like any other).

        ``urgent`` (clean-up): the job runs as soon as ``owner``'s earlier jobs are done, ahead of the fair share.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the device worker is shut down")
            state = self._owners.setdefault(owner, _Owner())
            job = _Job(function, args, future, owner, next(self._sequence), urgent)
            if not state.queue and not state.running:
                job.tag = self._start_tag(state, job)
            state.queue.append(job)
            self._lock.notify()
        return future

    def forget(self, owner: Hashable) -> None:
        """Drop ``owner``'s accounting once it will submit nothing more (a finished session)."""
        with self._lock:
            state = self._owners.get(owner)
            if state is not None and not state.queue and not state.running:
                del self._owners[owner]

    def shutdown(self) -> None:
        """Run every queued job, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    # ------------------------------------------------------------------ the worker thread
    def _serve(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            started = self._clock()
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.function(*job.args))
                except BaseException as error:  # the caller gets it; the worker goes on
                    job.future.set_exception(error)
            self._done(job, self._clock() - started)

    def _next_job(self) -> _Job | None:
        with self._lock:
            while True:
                heads = [state.queue[0] for state in self._owners.values() if state.queue]
                if heads:
                    job = min(heads, key=lambda head: (head.tag, head.sequence))
                    state = self._owners[job.owner]
                    state.queue.popleft()
                    state.running = True
                    self._virtual_time = job.tag
                    return job
                if self._closed:
                    return None
                self._lock.wait()

    def _done(self, job: _Job, seconds: float) -> None:
        with self._lock:
            state = self._owners[job.owner]
            state.running = False
            state.finish = job.tag + seconds
            if state.queue:  # the owner's next job starts where this one finished
                state.queue[0].tag = self._start_tag(state, state.queue[0])

    def _start_tag(self, state: _Owner, job: _Job) -> float:
        return self._virtual_time if job.urgent else max(state.finish, self._virtual_time)
