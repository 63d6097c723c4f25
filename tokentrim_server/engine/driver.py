"""Driving one session: flow-control credit, the denoise/render overlap, the session's end, and its release.

Transport-neutral: a server (gRPC today, a WebRTC gateway or a scheduler tomorrow) builds a
:class:`SessionDriver`, feeds its :class:`SessionControl` with what the client asks (credit, stop, prompt
changes, no more requests), iterates :meth:`SessionDriver.chunks` for the rendered chunks in order, and
always calls :meth:`SessionDriver.finish`. Two activities run on the event loop:

* the producer waits for credit (at most the idle timeout), runs the next chunk on the device worker, and
  queues its rendering on the render worker, so rendering chunk k overlaps denoising chunk k+1;
* :meth:`SessionDriver.chunks` hands out the chunks in order as their rendering completes.

Whatever ends the session (done, stop, client gone, error, shutdown), :meth:`SessionDriver.finish` frees its
device state after every job it queued, then releases its admission reservation. Errors are raised as they
are (the transport decides what a client sees of them): a failure of the model, the policy or rendering
ends :meth:`SessionDriver.chunks` with that exception; the reasons a session ends early have their own
exceptions, :class:`SessionIdle` and :class:`SessionShutdown`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from tokentrim_server.engine.admission import Admission, Reservation
from tokentrim_server.engine.generation import ChunkStep, GenerationSession, SessionPlan
from tokentrim_server.engine.worker import DeviceWorker
from tokentrim_server.loading.model import ModelBundle

P = TypeVar("P")
Ending = Literal["completed", "stopped", "requests_closed", "length_limit"]


class SessionShutdown(Exception):
    """The server is shutting down and the session's grace period is over."""


class SessionIdle(Exception):
    """The session waited the idle timeout without credit."""


@dataclass(frozen=True)
class Workers:
    """The device worker (model calls) and the render worker (VAE decode and frame encoding)."""

    denoise: DeviceWorker
    render: DeviceWorker


class SessionControl:
    """What the client and the server asked of a running session; the producer waits on it.

    ``idle_timeout`` (seconds, 0: none) bounds how long the producer waits for credit.
    """

    def __init__(self, credits: int, max_credits: int, idle_timeout: float = 0.0) -> None:
        self.credits = credits
        self.max_credits = max_credits
        self.idle_timeout = idle_timeout
        self.stopped = False
        self.requests_closed = False  # the client half-closed: it grants nothing more
        self.shutdown = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def grant(self, chunks: int) -> None:
        self.credits = min(self.credits + chunks, self.max_credits)
        self._changed.set()

    def stop(self) -> None:
        self.stopped = True
        self._changed.set()

    def close_requests(self) -> None:
        """The client will send nothing more: the chunks already granted are still delivered."""
        self.requests_closed = True
        self._changed.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._changed.set()

    def end_by_shutdown(self) -> None:
        self.shutdown = True
        self._changed.set()

    @property
    def ending(self) -> bool:
        return self.stopped or self.shutdown or self.error is not None

    async def take_credit(self) -> bool:
        """Wait for one chunk of credit; ``False`` when the session is ending instead.

        After a half-close, the credit left is all there will be. Raises :class:`SessionIdle` when nothing
        happens within the idle timeout while there is no credit.
        """
        while True:
            if self.ending:
                return False
            if self.credits > 0:
                self.credits -= 1
                return True
            if self.requests_closed:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.idle_timeout or None)
            except TimeoutError:
                raise SessionIdle(
                    f"idle: no flow-control credit granted for {self.idle_timeout:g} s; the session was ended to "
                    "free its slot (grant credit sooner, or stop the session while not watching)"
                ) from None


@dataclass(frozen=True)
class DeliveredChunk(Generic[P]):
    """A chunk ready to hand to the client: its device step, its rendering, and where its time went."""

    step: ChunkStep
    payload: P
    queue_wait_seconds: float  # waiting for the device worker


Render = Callable[[GenerationSession, ChunkStep], P]
"""Turns a denoised chunk into what the transport sends (runs on the render worker, in chunk order)."""


class SessionDriver(Generic[P]):
    """One admitted session; :meth:`open`, then iterate :meth:`chunks`, and always :meth:`finish`.

    ``owner`` keys the session's jobs on the workers (their fair share, and the order of its clean-up);
    ``max_chunks`` is where an unbounded session ends; ``on_released`` runs once everything is freed.
    """

    def __init__(
        self,
        owner: str,
        plan: SessionPlan,
        control: SessionControl,
        workers: Workers,
        render: Render[P],
        max_chunks: int,
        admission: Admission,
        reservation: Reservation,
        on_released: Callable[[], None] | None = None,
    ) -> None:
        self.owner = owner
        self.plan = plan
        self.control = control
        self.workers = workers
        self.render = render
        self.max_chunks = max_chunks
        self.admission = admission
        self.reservation = reservation
        self.on_released = on_released
        self.generation: GenerationSession | None = None
        self._opening: Future[GenerationSession] | None = None
        self._outputs: asyncio.Queue[tuple[ChunkStep, float, asyncio.Future[P]] | None] = asyncio.Queue()
        self._producer: asyncio.Task[None] | None = None
        self._finished = False

    async def open(self, bundle: ModelBundle) -> None:
        """Build the device state on the device worker (raises what the pipeline, policy or hooks raise)."""
        self._opening = self.workers.denoise.submit(GenerationSession, bundle, self.plan, owner=self.owner)
        # Shielded: if the caller goes away meanwhile, the session is still built, then freed by finish().
        self.generation = await asyncio.shield(asyncio.wrap_future(self._opening))

    def request_prompt_change(self, prompt: str) -> None:
        """Use ``prompt`` from the next chunk boundary on."""
        self._generation.request_prompt_change(prompt)

    async def chunks(self) -> AsyncIterator[DeliveredChunk[P]]:
        """The session's chunks in order, until it ends; then raises why it ended early, if it did."""
        self._producer = asyncio.create_task(self._produce(), name=f"{self.owner}-producer")
        while True:
            item = await self._outputs.get()
            if item is None:
                break
            step, waited, rendering = item
            yield DeliveredChunk(step, await rendering, waited)
        if self.control.error is not None:
            raise self.control.error
        if self.control.shutdown:
            raise SessionShutdown("the server is shutting down; reconnect to another replica")

    def ending(self) -> Ending:
        """Why a session whose :meth:`chunks` ran out ended."""
        stream = self._generation.runner.stream
        if stream.done:
            return "completed"
        if self.control.stopped:
            return "stopped"
        if self.control.requests_closed:
            return "requests_closed"
        return "length_limit"

    def finish(self) -> None:
        """Stop producing and free everything the session holds, after every job it queued (idempotent)."""
        if self._finished:
            return
        self._finished = True
        if self._producer is not None:
            self._producer.cancel()
        opening, workers, owner = self._opening, self.workers, self.owner

        def release_after_device_jobs() -> None:
            try:
                if opening is not None and opening.exception() is None:
                    opening.result().close()
            finally:  # a failing close must not keep the reservation for ever
                self.admission.release(self.reservation)
                workers.denoise.forget(owner)
                if self.on_released is not None:
                    self.on_released()

        def after_render_jobs() -> None:
            workers.render.forget(owner)
            workers.denoise.submit(release_after_device_jobs, owner=owner, urgent=True)

        # A worker runs one owner's jobs in order: the render jobs of this session run before this one, then
        # the release is queued behind every device job of the session, so nothing is freed while in use.
        workers.render.submit(after_render_jobs, owner=owner, urgent=True)

    # ------------------------------------------------------------------ internals
    @property
    def _generation(self) -> GenerationSession:
        if self.generation is None:
            raise RuntimeError("the session is not open")
        return self.generation

    async def _produce(self) -> None:
        generation = self._generation
        try:
            while not self._at_end() and await self.control.take_credit():
                step, waited = await self.workers.denoise.run_timed(generation.step, owner=self.owner)
                rendering = asyncio.ensure_future(
                    self.workers.render.run(self.render, generation, step, owner=self.owner)
                )
                await self._outputs.put((step, waited, rendering))
        except Exception as error:  # chunks() raises it; other sessions are untouched
            self.control.fail(error)
        finally:
            self._outputs.put_nowait(None)

    def _at_end(self) -> bool:
        stream = self._generation.runner.stream
        return stream.done or stream.emitted >= self.max_chunks
