"""The device worker: one thread that runs every model call, so the event loop never blocks on the device.

It is also the scheduler: jobs carry an owner (a session), and each time the device is free it picks what
runs next, and which sessions' chunks run together as one batched step (:mod:`.batching`).

*Fair share.* Start-time fair queuing over the device time each owner has used: each owner has a virtual
finish time ``F`` (the device seconds it was charged); a job queued by owner ``o`` gets the start tag
``max(F_o, V)``, where ``V`` is the start tag of the job last picked, so an owner that sat idle cannot bank
its unused share and then monopolise the device. Jobs of one owner run in submission order, which the
sessions' clean-up relies on. A running job is never interrupted. Clean-up jobs are *urgent*: they start at
the current virtual time, so a finished session frees its memory and its slot as soon as its own earlier
jobs are done, however much device time it had used.

*Playout slack.* Among the owners whose start tag is within ``fairness_seconds`` of the smallest, the job
with the least slack runs first (a chunk step's slack: how far its session's stream is ahead of its viewer,
:mod:`.playout`; jobs without one, such as opening a session, go first); then the smallest tag, then the
first submitted. So the stream closest to a stall is served first, but an owner whose chunks are expensive
cannot get more than ``fairness_seconds`` of device time ahead of the others, however little slack it has:
an expensive session cannot starve cheap ones. ``fairness_seconds = 0`` is plain fair queuing;
``inf`` plain least-slack-first.

*Batching.* When the picked job is batchable (:class:`~tokentrim_server.engine.batching.Batched`: a chunk step
on the device worker, a chunk's rendering on the render worker), the worker takes with it the queued jobs of
other owners with the same batch key (for steps: pipeline, frame size, denoising steps; for renderings: the
chunk's shape), up to ``max_batch`` in all, in the same order, and runs them together, their device calls
batched. The batch's time is charged to its owners in proportion to their jobs' compute cost (denoising
steps x tokens), so a session pays for its own work whatever it ran with. Client credit stays the
backpressure: a session without credit has no step queued.

On CUDA the measured time is the host's wall time of the job, which includes the device time wherever
the job synchronises (a policy's ``.item()``, a chunk's end); that is the cost the other sessions wait for.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tokentrim_server.engine.batching import Batched, BatchRunner

T = TypeVar("T")
Slack = Callable[[], float]
"""Seconds the owner's stream is ahead of its viewer now (negative: behind)."""


@dataclass
class _Job:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any]
    owner: Hashable
    sequence: int
    urgent: bool
    tag: float = 0.0
    slack: Slack | None = None
    batched: Batched[Any] | None = None  # a job that may run batched with other owners' (function unused)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0

    def priority(self, slack: float) -> tuple[float, float, int]:
        return slack, self.tag, self.sequence

    @property
    def batch_key(self) -> Hashable | None:
        return self.batched.key if self.batched is not None else None


@dataclass(frozen=True)
class Share:
    """How a batchable job ran: with how many jobs, its share of their time, and how long it waited."""

    batch_size: int
    seconds: float  # the batch's measured time times the job's share of the batch's cost
    waited: float  # seconds from its submission until it started


@dataclass
class _Owner:
    finish: float = 0.0  # virtual finish time: the owner's start tag plus the device seconds its jobs took
    queue: deque[_Job] = field(default_factory=deque)
    running: bool = False


class DeviceWorker:
    """A single-thread, fair-queuing, batching executor with an asyncio face; ``name`` labels its thread.

    ``clock`` measures a job's cost (injectable for tests); ``max_batch`` is the most sessions stepped together
    (1: no batching); ``fairness_seconds`` the device time an owner may get ahead of the others when it has
    the least slack.
    """

    def __init__(
        self,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        max_batch: int = 1,
        fairness_seconds: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        if not fairness_seconds >= 0:
            raise ValueError(f"fairness_seconds must be >= 0; got {fairness_seconds}")
        self._clock = clock
        self.max_batch = max_batch
        self.fairness_seconds = fairness_seconds
        self._batches = BatchRunner(max_batch) if max_batch > 1 else None
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

    async def run_batched(
        self, job: Batched[T], owner: Hashable = None, slack: Slack | None = None
    ) -> tuple[T, Share]:
        """Run ``job`` on the worker, batched with other owners' jobs of its key where the schedule allows."""
        future: Future[tuple[T, Share]] = Future()
        self._queue(_Job(job.run_alone, (), future, owner, 0, False, slack=slack, batched=job))
        return await asyncio.wrap_future(future)

    def submit(
        self,
        function: Callable[..., T],
        *args: object,
        owner: Hashable = None,
        urgent: bool = False,
        slack: Slack | None = None,
    ) -> Future[T]:
        """Queue ``function(*args)`` for ``owner`` without waiting (``None`` is an owner like any other).

        ``urgent`` (clean-up): the job runs as soon as ``owner``'s earlier jobs are done, ahead of the fair share;
        ``slack``: see the module's description (``None``: it goes before jobs with a slack).
        """
        future: Future[T] = Future()
        self._queue(_Job(function, args, future, owner, 0, urgent, slack=slack))
        return future

    def queued_batchable(self) -> int:
        """Batchable jobs (chunk steps, renderings) waiting for the worker: the scheduler's queue depth."""
        with self._lock:
            return sum(job.batched is not None for state in self._owners.values() for job in state.queue)

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
        if self._batches is not None:
            self._batches.shutdown()

    # ------------------------------------------------------------------ the worker thread
    def _queue(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the device worker is shut down")
            state = self._owners.setdefault(job.owner, _Owner())
            job.sequence = next(self._sequence)
            if not state.queue and not state.running:
                job.tag = self._start_tag(state, job)
            state.queue.append(job)
            self._lock.notify()

    def _serve(self) -> None:
        while True:
            jobs = self._next_jobs()
            if not jobs:
                return
            started = self._clock()
            running = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            outcomes = self._run_together(running) if len(running) > 1 else [self._run_alone(job) for job in running]
            shares = self._done(jobs, running, self._clock() - started)
            for job, (result, error) in zip(running, outcomes, strict=True):
                if error is not None:  # the caller gets it; the worker goes on
                    job.future.set_exception(error)
                elif job.batched is not None:
                    share = Share(len(running), shares[id(job)], job.started - job.submitted)
                    job.future.set_result((result, share))
                else:
                    job.future.set_result(result)

    def _run_alone(self, job: _Job) -> tuple[Any, BaseException | None]:
        job.started = time.perf_counter()
        try:
            return job.function(*job.args), None
        except BaseException as error:
            return None, error

    def _run_together(self, jobs: list[_Job]) -> list[tuple[Any, BaseException | None]]:
        assert self._batches is not None
        for job in jobs:
            job.started = time.perf_counter()
        outcomes, _ = self._batches.run([job.batched for job in jobs])  # type: ignore[misc]
        return [(done.result(), None) if done.exception() is None else (None, done.exception()) for done in outcomes]

    def _next_jobs(self) -> list[_Job]:
        """The next job, with the jobs batched with it; empty once shut down and drained."""
        with self._lock:
            while True:
                heads = [state.queue[0] for state in self._owners.values() if state.queue]
                if heads:
                    jobs = self._pick(heads)
                    for job in jobs:
                        state = self._owners[job.owner]
                        state.queue.popleft()
                        state.running = True
                    self._virtual_time = jobs[0].tag
                    return jobs
                if self._closed:
                    return []
                self._lock.wait()

    def _pick(self, heads: list[_Job]) -> list[_Job]:
        slack = {id(job): -math.inf if job.slack is None else job.slack() for job in heads}
        floor = min(job.tag for job in heads)
        eligible = [job for job in heads if job.tag <= floor + self.fairness_seconds]
        first = min(eligible, key=lambda job: job.priority(slack[id(job)]))
        key = first.batch_key
        if key is None or self.max_batch == 1:
            return [first]
        mates = sorted(
            (job for job in heads if job is not first and job.batch_key == key),
            key=lambda job: job.priority(slack[id(job)]),
        )
        return [first, *mates[: self.max_batch - 1]]

    def _done(self, jobs: list[_Job], running: list[_Job], seconds: float) -> dict[int, float]:
        """Charge the time ``running`` took to their owners, in proportion to each job's compute cost (a job
        cancelled before it ran costs nothing); returns each job's share (by ``id``)."""
        costs = {id(job): job.batched.cost if job.batched is not None else 1.0 for job in running}
        total = sum(costs.values())
        shares = {id(job): seconds * costs[id(job)] / total if id(job) in costs else 0.0 for job in jobs}
        with self._lock:
            for job in jobs:
                state = self._owners[job.owner]
                state.running = False
                state.finish = job.tag + shares[id(job)]
                if state.queue:  # the owner's next job starts where this one finished
                    state.queue[0].tag = self._start_tag(state, state.queue[0])
        return shares

    def _start_tag(self, state: _Owner, job: _Job) -> float:
        return self._virtual_time if job.urgent else max(state.finish, self._virtual_time)
