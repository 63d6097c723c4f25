"""One session as the server runs it: control messages, flow control, pipelined generation, clean-up.

Three activities per session, on the event loop:

* the reader takes client messages (prompt changes, credits, stop) and never touches the device; a message
  it cannot decode or read ends the session at once (INVALID_ARGUMENT, field ``request``), and the client
  closing its side means "no more requests": the chunks already granted are still delivered;
* the producer waits for credit (at most the idle timeout), runs the next chunk on the device worker, and
  queues its decode and encoding on the render worker, so decoding chunk k overlaps denoising chunk k+1;
* the handler (:meth:`ServedSession.responses`) sends the chunks in order as their frames are ready.

Whatever ends the session (done, stop, client gone, error, shutdown), :meth:`ServedSession.finish` frees
its device state after every job it queued, and releases its admission reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import grpc
import numpy as np
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_server.engine.admission import Admission, Reservation
from tokentrim_server.engine.generation import ChunkStep, GenerationSession
from tokentrim_server.engine.worker import DeviceWorker
from tokentrim_server.server.decoding import Undecodable
from tokentrim_server.server.encoding import fill_payload
from tokentrim_server.server.errors import log_fault
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import PlannedSession, RequestError, RequestValidator

log = logging.getLogger(__name__)

Ending = Literal["completed", "stopped", "length_limit"]


class SessionShutdown(Exception):
    """The server is shutting down and the session's grace period is over."""


class SessionIdle(Exception):
    """The session waited the idle timeout without credit."""


class SessionFault(Exception):
    """A server fault, already logged under the error id that the message carries."""


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
        self.error: Exception | None = None
        self._changed = asyncio.Event()

    def grant(self, chunks: int) -> None:
        self.credits = min(self.credits + chunks, self.max_credits)
        self._changed.set()

    def stop(self) -> None:
        self.stopped = True
        self._changed.set()

    def close_requests(self) -> None:
        self.requests_closed = True
        self._changed.set()

    def fail(self, error: Exception) -> None:
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


@dataclass
class Rendered:
    """A chunk's payload, ready to send."""

    message: pb.Chunk
    frames: int
    decode_seconds: float
    encode_seconds: float


@dataclass(frozen=True)
class Workers:
    """The device worker (model calls) and the render worker (VAE decode and frame encoding)."""

    denoise: DeviceWorker
    render: DeviceWorker


class ServedSession:
    """A running session; build with :meth:`open`, iterate :meth:`responses`, always :meth:`finish`."""

    def __init__(
        self,
        session_id: str,
        planned: PlannedSession,
        reservation: Reservation,
        workers: Workers,
        admission: Admission,
        metrics: ServerMetrics,
        validator: RequestValidator,
    ) -> None:
        self.session_id = session_id
        self.planned = planned
        self.plan = planned.plan
        self.reservation = reservation
        self.workers = workers
        self.admission = admission
        self.metrics = metrics
        self.validator = validator
        config = validator.config
        self.control = SessionControl(planned.credits, config.max_credits, config.idle_timeout_seconds)
        self.admitted_at = time.perf_counter()
        self.generation: GenerationSession | None = None
        self._opening: Future[GenerationSession] | None = None
        self._outputs: asyncio.Queue[tuple[ChunkStep, float, asyncio.Future[Rendered]] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._finished = False
        self.chunks_sent = 0
        self.frames_sent = 0
        self._cache_bytes = 0  # this session's share of the kv-cache gauge
        self.on_finished: Callable[[], None] | None = None

    @property
    def policy_name(self) -> str:
        return self.plan.policy.name

    async def open(self, bundle: object) -> None:
        """Build the device state on the device worker (raises what the pipeline, policy or hooks raise)."""
        self._opening = self.workers.denoise.submit(GenerationSession, bundle, self.plan, owner=self.session_id)
        # Shielded: if the client goes away meanwhile, the session is still built, then freed by finish().
        self.generation = await asyncio.shield(asyncio.wrap_future(self._opening))

    def started_message(self, model: str, fps: float) -> pb.GenerateResponse:
        plan = self.plan
        started = pb.SessionStarted(
            session_id=self.session_id, model=model, pipeline=plan.pipeline, height=plan.height,
            width=plan.width, frames_per_second=fps, seed=plan.seed, chunks=plan.chunks or 0,
            cache_policy=plan.policy.name, session_hooks=[hook.name for hook in plan.hooks],
            credits=self.control.credits, cache_budget_bytes=self.reservation.cache_bytes,
        )
        return pb.GenerateResponse(started=started)

    async def responses(self, requests: AsyncIterator[pb.GenerateRequest]) -> AsyncIterator[pb.GenerateResponse]:
        """Run the session and yield its chunk messages, then its end message."""
        self._tasks = [
            asyncio.create_task(self._read(requests), name=f"{self.session_id}-reader"),
            asyncio.create_task(self._produce(), name=f"{self.session_id}-producer"),
        ]
        while True:
            item = await self._outputs.get()
            if item is None:
                break
            step, waited, rendering = item
            try:
                rendered = await rendering
            except Exception:
                raise SessionFault(log_fault(log, f"session {self.session_id}: rendering failed")) from None
            self._observe(step, waited, rendered)
            yield pb.GenerateResponse(chunk=rendered.message)
            self.chunks_sent += 1
            self.frames_sent += rendered.frames
        if self.control.error is not None:
            raise self.control.error
        if self.control.shutdown:
            raise SessionShutdown("the server is shutting down; reconnect to another replica")
        reason = self._ending()
        self.metrics.sessions_ended.labels(reason).inc()
        ended = pb.SessionEnded(
            reason={"completed": pb.END_REASON_COMPLETED, "stopped": pb.END_REASON_STOPPED,
                    "length_limit": pb.END_REASON_LENGTH_LIMIT}[reason],
            message=self._end_message(reason), chunks=self.chunks_sent, frames=self.frames_sent,
        )
        yield pb.GenerateResponse(ended=ended)

    def finish(self) -> None:
        """Stop the session's tasks and free everything it holds, after every job it queued (idempotent)."""
        if self._finished:
            return
        self._finished = True
        for task in self._tasks:
            task.cancel()
        self.metrics.cache_bytes.dec(self._cache_bytes)
        opening = self._opening

        def release_after_device_jobs() -> None:
            try:
                if opening is not None and opening.exception() is None:
                    opening.result().close()
            except Exception:  # a failing close must not keep the reservation for ever
                log.exception("session %s: freeing its device state failed", self.session_id)
            finally:
                self.admission.release(self.reservation)
                self.workers.denoise.forget(self.session_id)
                if self.on_finished is not None:
                    self.on_finished()

        def after_render_jobs() -> None:
            self.workers.render.forget(self.session_id)
            self.workers.denoise.submit(release_after_device_jobs, owner=self.session_id)

        # A worker runs one owner's jobs in order: the render jobs of this session run before this one, then
        # the release is queued behind every device job of the session, so nothing is freed while in use.
        self.workers.render.submit(after_render_jobs, owner=self.session_id)

    # ------------------------------------------------------------------ activities
    async def _read(self, requests: AsyncIterator[pb.GenerateRequest | Undecodable]) -> None:
        try:
            async for message in requests:
                if isinstance(message, Undecodable):
                    raise RequestError("request", message.describe())
                kind = message.WhichOneof("request")
                if kind == "change_prompt":
                    prompt = self.validator.prompt(message.change_prompt.prompt, "change_prompt.prompt")
                    assert self.generation is not None
                    self.generation.request_prompt_change(prompt)
                elif kind == "grant_credits":
                    self.control.grant(message.grant_credits.chunks)
                elif kind == "stop":
                    self.control.stop()
                elif kind == "start":
                    raise RequestError("start", "the session has already started; send start only once")
                else:
                    raise RequestError("request", "empty message: set one of change_prompt, grant_credits, stop")
            self.control.close_requests()  # the client will send nothing more; granted chunks still go out
        except RequestError as error:
            self.control.fail(error)
        except grpc.aio.AbortError:  # the call was ended by the handler; nothing is left to read
            return
        except Exception:  # whatever broke the stream, the session must not linger with its slot
            what = f"session {self.session_id}: reading the client's messages failed"
            self.control.fail(RequestError("request", log_fault(log, what)))

    async def _produce(self) -> None:
        assert self.generation is not None
        generation = self.generation
        try:
            while not self._at_end() and await self.control.take_credit():
                step, waited = await self.workers.denoise.run_timed(generation.step, owner=self.session_id)
                rendering = asyncio.ensure_future(self.workers.render.run(self._render, step, owner=self.session_id))
                await self._outputs.put((step, waited, rendering))
        except SessionIdle as error:
            self.control.fail(error)
        except Exception:  # the handler ends the call with it; other sessions are untouched
            self.control.fail(SessionFault(log_fault(log, f"session {self.session_id}: generation failed")))
        finally:
            self._outputs.put_nowait(None)

    def _render(self, step: ChunkStep) -> Rendered:
        """Decode and encode one chunk (on the render worker, in chunk order)."""
        assert self.generation is not None
        chunk = step.result.chunk
        first_frame = self.generation.frames_emitted
        started = time.perf_counter()
        data: np.ndarray = (
            self.generation.latents(step) if self.planned.encoding == "latents" else self.generation.decode(step)
        )
        decoded = time.perf_counter()
        message = pb.Chunk(
            index=chunk.index, first_frame=first_frame, frame_count=data.shape[0],
            prompt_version=step.prompt_version,
        )
        fill_payload(message, self.planned.encoding, data, self.planned.jpeg_quality)
        encoded = time.perf_counter()
        report = step.result.report
        message.cache_report.CopyFrom(pb.CacheReport(
            policy=self.policy_name, severity=report.severity, threshold=report.threshold,
            triggered=report.triggered, regenerations=report.regenerations, tokens_removed=report.tokens_removed,
            cache_tokens_before=report.cache_tokens_before, cache_tokens_after=report.cache_tokens_after,
            cache_bytes_before=report.cache_bytes_before, cache_bytes_after=report.cache_bytes_after,
            policy_seconds=report.policy_seconds,
        ))
        for hook in report.hooks:
            message.hook_reports.add(name=hook.name, seconds=hook.seconds, values=hook.values)
        return Rendered(message, data.shape[0], decoded - started, encoded - decoded)

    # ------------------------------------------------------------------ bookkeeping
    def _observe(self, step: ChunkStep, waited: float, rendered: Rendered) -> None:
        timings = rendered.message.timings
        timings.queue_wait_seconds = waited
        timings.denoise_seconds = step.denoise_seconds
        timings.decode_seconds = rendered.decode_seconds
        timings.encode_seconds = rendered.encode_seconds
        timings.prompt_change_seconds = step.prompt_change_seconds
        stages = {
            "queue_wait": waited, "denoise": step.denoise_seconds, "decode": rendered.decode_seconds,
            "encode": rendered.encode_seconds, "prompt_change": step.prompt_change_seconds,
        }
        self.metrics.cache_bytes.inc(step.cache_bytes - self._cache_bytes)
        self._cache_bytes = step.cache_bytes
        report = step.result.report
        self.metrics.observe_chunk(self.plan.pipeline, self.policy_name, rendered.frames, stages, report)
        if step.prompt_change_seconds > 0:
            self.metrics.prompt_changes.inc()
        for hook in report.hooks:
            self.metrics.observe_hook(hook.name, hook.seconds, dict(hook.values))
        if self.chunks_sent == 0:
            self.metrics.time_to_first_frame.labels(self.plan.pipeline).observe(time.perf_counter() - self.admitted_at)

    def _at_end(self) -> bool:
        assert self.generation is not None
        emitted = self.generation.runner.stream.emitted
        return self.generation.runner.stream.done or emitted >= self.planned.max_chunks

    def _ending(self) -> Ending:
        assert self.generation is not None
        if self.generation.runner.stream.done:
            return "completed"
        if self.control.stopped or self.control.requests_closed:
            return "stopped"
        return "length_limit"

    def _end_message(self, reason: Ending) -> str:
        return {
            "completed": f"generated the {self.plan.chunks} requested chunks",
            "stopped": "the client closed its requests; the chunks it had granted were delivered"
            if self.control.requests_closed and not self.control.stopped else "stopped by the client",
            "length_limit": f"reached the server's limit of {self.planned.max_chunks} chunks per session",
        }[reason]
