"""One session as the gRPC server serves it: client messages in, protobuf chunks out, metrics.

The session itself (credit, the denoise/render overlap, the end, the release) is the engine's
:class:`~tokentrim_server.engine.driver.SessionDriver`; this adapter adds what is gRPC's:

* the reader takes client messages and turns them into driver commands; a message it cannot decode or read
  ends the session at once (INVALID_ARGUMENT, field ``request``), and the client closing its side means
  "no more requests": the chunks already granted are still delivered;
* the render callback (on the render worker) decodes the chunk and encodes it as a ``pb.Chunk``;
* :meth:`ServedSession.responses` sends the chunks in order, observes them in the metrics, then the end;
* a dropped call can :meth:`ServedSession.hold` the session, and a resuming call picks it up again
  (:meth:`ServedSession.resume`, then :meth:`ServedSession.responses` from the client's last chunk).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import Message
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_server.engine.admission import Admission, Reservation
from tokentrim_server.engine.driver import DeliveredChunk, Ending, SessionControl, SessionDriver, Workers
from tokentrim_server.engine.generation import ChunkStep, GenerationSession
from tokentrim_server.engine.playout import PlayoutClock
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.server.decoding import Undecodable
from tokentrim_server.server.encoding import fill_payload
from tokentrim_server.server.errors import log_fault
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import PlannedSession, RequestError, RequestValidator

log = logging.getLogger(__name__)

HALF_CLOSE_SETTLE_SECONDS = 0.2
VIDEO_FPS = 16.0  # Wan 2.1 is trained on 16 frames per second
END_REASONS = {
    "completed": pb.END_REASON_COMPLETED, "stopped": pb.END_REASON_STOPPED,
    "requests_closed": pb.END_REASON_STOPPED, "length_limit": pb.END_REASON_LENGTH_LIMIT,
}


@dataclass
class Rendered:
    """A chunk's payload, ready to send."""

    message: pb.Chunk
    frames: int
    decode_seconds: float
    encode_seconds: float


class ServedSession:
    """A running session; :meth:`open`, iterate :meth:`responses`, always :meth:`finish`."""

    def __init__(
        self,
        session_id: str,
        planned: PlannedSession,
        reservation: Reservation,
        workers: Workers,
        admission: Admission,
        metrics: ServerMetrics,
        validator: RequestValidator,
        on_released: Callable[[], None] | None = None,
        resume_token: str = "",
    ) -> None:
        self.session_id = session_id
        self.resume_token = resume_token
        self.taken_over = False  # a resume took the session from its call
        self.planned = planned
        self.plan = planned.plan
        self.metrics = metrics
        self.validator = validator
        config = validator.config
        self.control = SessionControl(planned.credits, config.max_credits, config.idle_timeout_seconds)
        self.driver: SessionDriver[Rendered] = SessionDriver(
            session_id, self.plan, self.control, workers, self._render, planned.max_chunks, admission, reservation,
            PlayoutClock(VIDEO_FPS, config.playout_prebuffer_seconds), on_released,
            replay_chunks=config.max_credits if resume_token else 0,
        )
        self.admitted_at = time.perf_counter()
        self._reader: asyncio.Task[None] | None = None
        self.frames_sent = 0
        self._cache_bytes = 0  # this session's share of the kv-cache gauge

    @property
    def policy_name(self) -> str:
        return self.plan.policy.name

    async def open(self, bundle: ModelBundle) -> None:
        await self.driver.open(bundle)

    def started_message(self, model: str, fps: float, resumed: bool = False) -> pb.GenerateResponse:
        plan = self.plan
        started = pb.SessionStarted(
            session_id=self.session_id, model=model, pipeline=plan.pipeline, height=plan.height,
            width=plan.width, frames_per_second=fps, seed=plan.seed, chunks=plan.chunks or 0,
            cache_policy=plan.policy.name, session_hooks=[hook.name for hook in plan.hooks],
            credits=self.control.credits, cache_budget_bytes=self.driver.reservation.cache_bytes,
            resume_token=self.resume_token, resumed=resumed,
        )
        return pb.GenerateResponse(started=started)

    async def responses(
        self, requests: AsyncIterator[pb.GenerateRequest], after: int | None = None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Run the session and yield its chunk messages from chunk ``after + 1`` on, then its end message."""
        self._reader = asyncio.create_task(self._read(requests), name=f"{self.session_id}-reader")
        async for delivered in self.driver.chunks(after):
            if not delivered.replayed:
                self._observe(delivered)
                self.frames_sent += delivered.payload.frames
            yield pb.GenerateResponse(chunk=delivered.payload.message)
        reason = self.driver.ending()
        self.metrics.sessions_ended.labels("stopped" if reason == "requests_closed" else reason).inc()
        ended = pb.SessionEnded(
            reason=END_REASONS[reason], message=self._end_message(reason), chunks=self.driver.delivered,
            frames=self.frames_sent,
        )
        yield pb.GenerateResponse(ended=ended)

    @property
    def chunks_sent(self) -> int:
        return self.driver.delivered

    @property
    def resumable(self) -> bool:
        return bool(self.resume_token) and self.driver.resumable

    async def settle(self, timeout: float) -> None:
        """Give the reader up to ``timeout`` to take what the client sent before its call ended (a client that
        leaves on purpose sends ``stop`` and cancels at once; the stop decides that nothing is held)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.control.stopped and self._reader is not None and not self._reader.done():
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.01)

    def hold(self) -> None:
        """The call dropped: stop reading it, pause the session and park its state."""
        if self._reader is not None:
            self._reader.cancel()
        self.driver.hold()

    def resume(self, credits: int) -> None:
        """A resuming call took over with ``credits`` of flow-control credit."""
        self.driver.resume(credits)

    def finish(self) -> None:
        """Stop reading and free everything the session holds (idempotent)."""
        if self._reader is not None:
            self._reader.cancel()
        self.metrics.cache_bytes.dec(self._cache_bytes)
        self._cache_bytes = 0
        if self.driver.delivered and not self.driver.finished:
            self.metrics.realtime_factor.labels(self.plan.pipeline).observe(self.driver.playout.realtime_factor())
        self.driver.finish()

    # ------------------------------------------------------------------ the client's messages
    async def _read(self, requests: AsyncIterator[pb.GenerateRequest | Undecodable]) -> None:
        try:
            async for message in requests:
                if isinstance(message, Undecodable):
                    raise RequestError("request", message.describe())
                kind = message.WhichOneof("request")
                if kind == "change_prompt":
                    prompt = self.validator.prompt(message.change_prompt.prompt, "change_prompt.prompt")
                    self.driver.request_prompt_change(prompt)
                elif kind == "grant_credits":
                    self.control.grant(message.grant_credits.chunks)
                elif kind == "stop":
                    self.control.stop()
                elif kind in ("start", "resume"):
                    raise RequestError(kind, f"the session has already started; {kind} only comes first")
                else:
                    raise RequestError("request", "empty message: set one of change_prompt, grant_credits, stop")
            # grpc ends the requests of a cancelled call too, and cancels the handler a moment later (which cancels
            # this task, holding or ending the session): only requests that end without that are a half-close.
            await asyncio.sleep(HALF_CLOSE_SETTLE_SECONDS)
            self.control.close_requests()  # the client will send nothing more; granted chunks still go out
        except RequestError as error:
            self.control.fail(error)
        except grpc.aio.AbortError:  # the call was ended by the handler; nothing is left to read
            return
        except Exception:  # whatever broke the stream, the session must not linger with its slot
            what = f"session {self.session_id}: reading the client's messages failed"
            self.control.fail(RequestError("request", log_fault(log, what)))

    # ------------------------------------------------------------------ chunks out
    def _render(self, generation: GenerationSession, step: ChunkStep) -> Rendered:
        """Decode and encode one chunk (on the render worker, in chunk order)."""
        chunk = step.result.chunk
        first_frame = generation.frames_emitted
        started = time.perf_counter()
        data: np.ndarray = generation.latents(step) if self.planned.encoding == "latents" else generation.decode(step)
        decoded = time.perf_counter()
        message = pb.Chunk(
            index=chunk.index, first_frame=first_frame, frame_count=data.shape[0],
            prompt_version=step.prompt_version,
        )
        fill_payload(message, self.planned.encoding, data, self.planned.jpeg_quality)
        encoded = time.perf_counter()
        report = step.result.report
        copy_fields(report, message.cache_report, policy=self.policy_name)
        for hook in report.hooks:
            message.hook_reports.add(name=hook.name, seconds=hook.seconds, values=hook.values)
        return Rendered(message, data.shape[0], decoded - started, encoded - decoded)

    def _observe(self, delivered: DeliveredChunk[Rendered]) -> None:
        step, rendered = delivered.step, delivered.payload
        stages = {
            "queue_wait": delivered.queue_wait_seconds, "denoise": step.denoise_seconds,
            "decode": rendered.decode_seconds, "encode": rendered.encode_seconds,
            "prompt_change": step.prompt_change_seconds,
        }
        copy_fields(stages, rendered.message.timings, suffix="_seconds")
        rendered.message.slack_seconds = delivered.playout.slack_seconds
        self.metrics.observe_playout(self.plan.pipeline, delivered.playout, step.batch_size)
        realtime = self.driver.admission.realtime
        if realtime is not None:
            realtime.record(delivered.playout.frames, step.device_seconds + delivered.render_seconds)
        self.metrics.cache_bytes.inc(step.cache_bytes - self._cache_bytes)
        self._cache_bytes = step.cache_bytes
        report = step.result.report
        self.metrics.observe_chunk(self.plan.pipeline, self.policy_name, rendered.frames, stages, report)
        if step.prompt_change_seconds > 0:
            self.metrics.prompt_changes.inc()
        for hook in report.hooks:
            self.metrics.observe_hook(hook.name, hook.seconds, dict(hook.values))
        if delivered.step.result.chunk.index == 0:
            self.metrics.time_to_first_frame.labels(self.plan.pipeline).observe(time.perf_counter() - self.admitted_at)

    def _end_message(self, reason: Ending) -> str:
        return {
            "completed": f"generated the {self.plan.chunks} requested chunks",
            "stopped": "stopped by the client",
            "requests_closed": "the client closed its requests; the chunks it had granted were delivered",
            "length_limit": f"reached the server's limit of {self.planned.max_chunks} chunks per session",
        }[reason]


def copy_fields(source: object, message: Message, suffix: str = "", **given: object) -> None:
    """Set each field of ``message`` from ``given``, else from ``source``'s same-named value (``name`` minus
    ``suffix``, as an attribute or a mapping key); values that are ``None`` leave the field unset. So an
    engine report and its protobuf mirror cannot drift apart field by field."""
    for field in message.DESCRIPTOR.fields:
        name = field.name.removesuffix(suffix)
        if field.name in given:
            value = given[field.name]
        elif isinstance(source, dict):
            value = source.get(name)
        else:
            value = getattr(source, name, None)
        if value is not None:
            setattr(message, field.name, value)
