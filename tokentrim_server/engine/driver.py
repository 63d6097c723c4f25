"""Driving one session: flow-control credit, the denoise/render overlap, the session's end, and its release.

Transport-neutral: a server (gRPC today, a WebRTC gateway or a scheduler tomorrow) builds a
:class:`SessionDriver`, feeds its :class:`SessionControl` with what the client asks (credit, stop, prompt
changes, no more requests), iterates :meth:`SessionDriver.chunks` for the rendered chunks in order, and
always calls :meth:`SessionDriver.finish`. Two activities run on the event loop:

* the producer waits for credit (at most the idle timeout), runs the next chunk on the device worker (which
  orders it by the session's playout slack and may batch it with other sessions' chunks), and queues its
  rendering on the render worker, so rendering chunk k overlaps denoising chunk k+1;
* :meth:`SessionDriver.chunks` hands out the chunks in order as their rendering completes, each timed
  against the session's :class:`~tokentrim_server.engine.playout.PlayoutClock` (its simulated viewer).

A transport whose client vanished can :meth:`SessionDriver.hold` the session instead of finishing it:
production pauses (the chunks in flight still complete), the state moves off the accelerator, and a later
:meth:`SessionDriver.resume` brings it back; :meth:`SessionDriver.chunks` then hands out again the chunks
after the last one the client received (the last ``replay_chunks`` are kept), then new ones. Nothing about
the generation changes, so the video is the one an uninterrupted session makes: bit for bit when its chunks
run alone, within float rounding when they run batched with other sessions' (the batches may differ).

Whatever ends the session (done, stop, client gone, error, shutdown, hold expired),
:meth:`SessionDriver.finish` frees its device state after every job it queued, then releases its admission
reservation. Errors are raised as they are (the transport decides what a client sees of them): a failure of
the model, the policy or rendering ends :meth:`SessionDriver.chunks` with that exception; the reasons a
session ends early have their own exceptions, :class:`SessionIdle`, :class:`SessionShutdown` and
:class:`ReplayGap`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

import torch

from tokentrim_server.engine.admission import Admission, Reservation
from tokentrim_server.engine.generation import ChunkStep, GenerationSession, SessionPlan
from tokentrim_server.engine.playout import PlayoutClock, PlayoutTiming
from tokentrim_server.engine.worker import DeviceWorker, Share
from tokentrim_server.loading.model import ModelBundle

P = TypeVar("P")
Ending = Literal["completed", "stopped", "requests_closed", "length_limit"]


class SessionShutdown(Exception):
    """The server is shutting down and the session's grace period is over."""


class SessionIdle(Exception):
    """The session waited the idle timeout without credit."""


class ReplayGap(Exception):
    """A resume asked for chunks the session no longer keeps (or never delivered)."""


PARKED = torch.device("cpu")  # where a held session's state waits


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
        self.held = False  # the client is gone for now: produce nothing, never time out
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

    def hold(self) -> None:
        self.held = True
        self._changed.set()

    def resume(self, credits: int) -> None:
        """A new call took over: its credit replaces the old call's, and it may send requests again."""
        self.held = False
        self.requests_closed = False
        self.credits = min(credits, self.max_credits)
        self._changed.set()

    def end_by_shutdown(self) -> None:
        self.shutdown = True
        self._changed.set()

    @property
    def ending(self) -> bool:
        return self.stopped or self.shutdown or self.error is not None

    async def take_credit(self) -> bool:
        """Wait for one chunk of credit; ``False`` when the session is ending instead.

        After a half-close, the credit left is all there will be. A held session waits for its resume. Raises
        :class:`SessionIdle` when nothing happens within the idle timeout while there is no credit.
        """
        while True:
            if self.ending:
                return False
            if not self.held and self.credits > 0:
                self.credits -= 1
                return True
            if not self.held and self.requests_closed:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), None if self.held else self.idle_timeout or None)
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
    playout: PlayoutTiming  # what the session's simulated viewer saw of it (when first handed out)
    render_seconds: float  # its share of the render worker's time (decode and encode, batched or not)
    replayed: bool = False  # handed out before, again for a resumed client


Render = Callable[[GenerationSession, ChunkStep], P]
"""Turns a denoised chunk into what the transport sends (runs on the render worker, in chunk order)."""


class SessionDriver(Generic[P]):
    """One admitted session; :meth:`open`, then iterate :meth:`chunks`, and always :meth:`finish`.

    ``owner`` keys the session's jobs on the workers (their fair share, and the order of its clean-up);
    ``max_chunks`` is where an unbounded session ends (``None``: when stopped); ``replay_chunks`` how many of
    the last chunks handed out are kept for a resumed client; ``on_released`` runs once everything is freed;
    ``playout`` is the session's simulated viewer (its slack orders the session's chunks on the device worker).
    """

    def __init__(
        self,
        owner: str,
        plan: SessionPlan,
        control: SessionControl,
        workers: Workers,
        render: Render[P],
        max_chunks: int | None,
        admission: Admission,
        reservation: Reservation,
        playout: PlayoutClock,
        on_released: Callable[[], None] | None = None,
        replay_chunks: int = 0,
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
        self.playout = playout
        self.generation: GenerationSession | None = None
        self._opening: Future[GenerationSession] | None = None
        self._outputs: asyncio.Queue[tuple[ChunkStep, float, asyncio.Future[tuple[P, Share]]] | None] = asyncio.Queue()
        self._head: tuple[ChunkStep, float, asyncio.Future[tuple[P, Share]]] | None = None  # taken, not yet out
        self._replay: deque[DeliveredChunk[P]] = deque(maxlen=replay_chunks)
        self.delivered = 0  # chunks handed out (each once; replays not counted)
        self._exhausted = False  # the producer is done and every chunk was handed out
        self._ended_by_half_close = False
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

    async def chunks(self, after: int | None = None) -> AsyncIterator[DeliveredChunk[P]]:
        """The session's chunks in order from chunk ``after + 1`` (``None``: from the first), until it ends; then
        raises why it ended early, if it did.

        Chunks already handed out come again from the replay buffer (:class:`ReplayGap` when they are no longer
        kept). The consumer may stop at any point (a dropped call): nothing is lost, the next call resumes.
        """
        if self._producer is None:
            self._producer = asyncio.create_task(self._produce(), name=f"{self.owner}-producer")
        for delivered in self.check_replay(after):
            yield replace(delivered, replayed=True)
        while not self._exhausted:
            if self._head is None:
                self._head = await self._outputs.get()  # cancellation-safe: nothing is taken then
                if self._head is None:
                    self._exhausted = True
                    break
            step, waited, rendering = self._head
            payload, share = await asyncio.shield(rendering)  # a dropped call must not cancel the chunk's rendering
            self._head = None
            timing = self.playout.deliver(self._generation.video_frames(step))
            delivered = DeliveredChunk(step, payload, waited, timing, share.seconds)
            self._replay.append(delivered)
            self.delivered += 1
            yield delivered
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
        if self._ended_by_half_close:
            return "requests_closed"
        return "length_limit"

    def check_replay(self, after: int | None) -> list[DeliveredChunk[P]]:
        """The chunks after chunk ``after`` that were already handed out, to hand out again; raises
        :class:`ReplayGap` unless they are all still kept."""
        wanted = 0 if after is None else after + 1
        kept = self.delivered - len(self._replay)
        if not kept <= wanted <= self.delivered:
            raise ReplayGap(
                f"chunk {wanted} cannot be sent again: {self.delivered} chunks were delivered and the last "
                f"{len(self._replay)} are kept (limits.replay_chunks)"
            )
        return list(self._replay)[wanted - kept :]

    @property
    def resumable(self) -> bool:
        """Whether a client could still want more of this session: it was neither stopped nor failed, and it has
        chunks to come, or it ended only because its requests ended: over a connection that was reset, that
        looks just like a half-close, so a client may still come back for the chunks it missed and more.
        """
        if self.generation is None or self._finished or self.control.ending:
            return False
        return not self._exhausted or self._ended_by_half_close

    def hold(self) -> None:
        """The client is gone for now: pause production and park the state off the accelerator."""
        self.control.hold()
        self._move_state(PARKED)

    def resume(self, credits: int) -> None:
        """A client is back: bring the state home, then produce again under ``credits``."""
        self._move_state(self._generation.device)  # queued before the producer's next step (one owner's order)
        self.playout.restart()
        self.control.resume(credits)
        if self._exhausted and self._ended_by_half_close:  # it only paused: production starts again
            self._exhausted = self._ended_by_half_close = False
            self._producer = None

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._finished

    def finish(self) -> None:
        """Stop producing and free everything the session holds, after every job it queued (idempotent)."""
        if self._finished:
            return
        self._finished = True
        if self._producer is not None:
            self._producer.cancel()
        self._cancel_renderings()
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
    def _cancel_renderings(self) -> None:
        """Drop the renderings no one will receive (those not started yet are skipped by the render worker), so a
        finished session's release does not wait for them."""
        pending = [self._head] if self._head is not None else []
        while not self._outputs.empty():
            pending.append(self._outputs.get_nowait())
        for item in pending:
            if item is not None:
                item[2].cancel()

    def _move_state(self, device: torch.device) -> None:
        generation = self._generation
        if generation.device == PARKED:  # a CPU server has nowhere else to park it
            return
        self.workers.denoise.submit(generation.move_state, device, owner=self.owner)
        self.workers.render.submit(generation.move_decoder_state, device, owner=self.owner)

    @property
    def _generation(self) -> GenerationSession:
        if self.generation is None:
            raise RuntimeError("the session is not open")
        return self.generation

    async def _produce(self) -> None:
        generation = self._generation
        try:
            while not self._at_end() and await self.control.take_credit():
                step, share = await self.workers.denoise.run_batched(
                    generation.step_job(), self.owner, self.playout.slack
                )
                step = replace(step, batch_size=share.batch_size, device_seconds=share.seconds)
                self.playout.produced(generation.video_frames(step))
                rendering = asyncio.ensure_future(
                    self.workers.render.run_batched(generation.render_job(self.render, step), self.owner)
                )
                await self._outputs.put((step, share.waited, rendering))
            self._ended_by_half_close = self.control.requests_closed and not self._at_end()
        except Exception as error:  # chunks() raises it; other sessions are untouched
            self.control.fail(error)
        finally:
            self._outputs.put_nowait(None)

    def _at_end(self) -> bool:
        stream = self._generation.runner.stream
        return stream.done or (self.max_chunks is not None and stream.emitted >= self.max_chunks)
