"""One streaming session on the device: pipeline stream, policy runner, hooks, prompt switches and decoding.

Everything here runs on the device worker's thread (see :mod:`tokentrim_server.engine.worker`), except
:meth:`GenerationSession.decode` and :meth:`GenerationSession.latents`, which may run on a render thread (one
at a time, in chunk order; on CUDA they use the session's render stream), and
:meth:`GenerationSession.request_prompt_change`, which is thread-safe and leaves the new prompt for the next
chunk boundary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from tokentrim_server.engine.batching import Batched
from tokentrim_server.engine.render_stream import Ready, RenderStream, batch_stream
from tokentrim_server.engine.report import ChunkResult
from tokentrim_server.engine.runner import open_runner
from tokentrim_server.hooks import SessionHook
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.models.causal_wan import ModelCall
from tokentrim_server.models.vae import (
    DecodeCall,
    StreamingVaeDecoder,
    decode_together,
    frames_to_uint8,
    video_frame_count,
)
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import PIPELINES
from tokentrim_server.policies.base import CachePolicy

P = TypeVar("P")


@dataclass(frozen=True)
class SessionPlan:
    """A validated session request, ready to run on a model."""

    prompt: str
    seed: int
    pipeline: str
    options: Any  # the pipeline's options dataclass
    chunks: int | None  # None: until stopped or the server's length limit
    height: int
    width: int
    policy: CachePolicy
    hooks: Sequence[SessionHook] = ()
    decode: bool = True  # False when the client takes latents


@dataclass(frozen=True)
class ChunkStep:
    """A denoised chunk with where its device time went."""

    result: ChunkResult
    prompt_version: int
    prompt_change_seconds: float
    denoise_seconds: float
    cache_bytes: int  # KV-cache memory the session holds after the chunk
    ready: Ready = field(default_factory=Ready)  # where the chunk's latents are complete on the denoising stream
    batch_size: int = 1  # sessions whose chunks were stepped together (1: alone); set by the device worker
    device_seconds: float = 0.0  # its share of the device time of the step it was in; set by the device worker


class GenerationSession:
    """A session's device state; build it on the device worker and close it there."""

    def __init__(self, bundle: ModelBundle, plan: SessionPlan) -> None:
        self.bundle = bundle
        self.plan = plan
        model = bundle.transformer
        pipeline = PIPELINES[plan.pipeline](model, plan.options)
        latent_shape = bundle.latent_shape(plan.height, plan.width)
        stream = pipeline.open(self._embed(plan.prompt), latent_shape, SeededNoise(plan.seed), plan.chunks)
        self.runner = open_runner(
            stream, plan.policy, plan.seed, plan.hooks, prompt=plan.prompt, model=bundle.name
        )
        self.decoder = StreamingVaeDecoder(bundle.vae) if plan.decode else None
        self._decode_call: Callable[[DecodeCall], torch.Tensor] = _decode_alone  # batched by render_job
        self.render_stream = RenderStream(model.device)
        # The emitted chunks a prompt switch would read (the stream's recache mode says which).
        self._recent: deque[Chunk] = deque()
        self._pending_prompt: str | None = None
        self._prompt_lock = threading.Lock()
        self.prompt_version = 0
        self.frames_emitted = 0

    @property
    def frames_per_block(self) -> int:
        return self.runner.stream.frames_per_block

    def step_job(self) -> Batched[ChunkStep]:
        """:meth:`step` as a job the device worker may batch with other sessions' steps (same pipeline, frame size
        and denoising steps: they stay in step). The first chunk of a session with hooks is stepped alone (their
        differentiable calls run outside the batched path). Its cost (denoising steps x tokens) shares out a
        batch's device time."""
        stream = self.runner.stream
        hooked = bool(self.plan.hooks) and stream.emitted == 0
        steps = len(stream.timesteps)
        key = None if hooked else ("denoise", stream.pipeline_name, stream.block_shape, steps, self.device)

        def task(call_model: Callable[[ModelCall], torch.Tensor]) -> ChunkStep:
            stream.call_model = call_model
            try:
                return self.step()
            finally:
                stream.call_model = stream.call_alone

        return Batched(key, stream.step_cost, task, self.bundle.transformer.forward_many_no_grad)

    def render_job(self, render: Callable[[GenerationSession, ChunkStep], P], step: ChunkStep) -> Batched[P]:
        """``render(self, step)`` as a job the render worker may batch with other sessions': chunks of one shape
        decode as one batch, each session keeping its own causal decoder context. On CUDA the batch runs on the
        device's batch stream, between this session's render stream reaching the decode and going on."""
        latents = step.result.chunk.latents
        key = None if self.decoder is None else ("decode", tuple(latents.shape), step.result.chunk.index == 0)

        def task(call: Callable[[HandedDecode], tuple[torch.Tensor, Ready]]) -> P:
            def decode_in_batch(decode: DecodeCall) -> torch.Tensor:
                frames, done = call(HandedDecode(decode, self.render_stream.mark_ready()))
                self.render_stream.take(done, frames)
                return frames

            self._decode_call = decode_in_batch
            try:
                return render(self, step)
            finally:
                self._decode_call = _decode_alone

        return Batched(key, latents.numel(), task, decode_handed)

    def request_prompt_change(self, prompt: str) -> None:
        """Use ``prompt`` from the next chunk on (thread-safe; a later request replaces an unapplied one)."""
        with self._prompt_lock:
            self._pending_prompt = prompt

    def step(self) -> ChunkStep:
        """Apply a pending prompt switch, then denoise the next chunk under the cache policy."""
        switch_seconds = self._apply_prompt_change()
        started = time.perf_counter()
        result = self.runner.next_chunk()
        ready = self.render_stream.mark_ready()
        denoise_seconds = time.perf_counter() - started
        self._remember(result.chunk)
        cache_bytes = self.runner.stream.cache.stats().allocated_bytes
        return ChunkStep(result, self.prompt_version, switch_seconds, denoise_seconds, cache_bytes, ready)

    def video_frames(self, step: ChunkStep) -> int:
        """How many video frames the stepped chunk makes (what a viewer plays, whatever the output encoding)."""
        chunk = step.result.chunk
        return video_frame_count(self.bundle.vae, chunk.latents.shape[1], first=chunk.index == 0)

    def decode(self, step: ChunkStep) -> np.ndarray:
        """The stepped chunk's video frames, uint8 ``[T, H, W, 3]``; call in chunk order."""
        if self.decoder is None:
            raise RuntimeError("this session delivers latents; it has no decoder")
        latents = step.result.chunk.latents
        with self.render_stream.rendering(step.ready, latents):
            decoded = self._decode_call(DecodeCall(self.decoder, latents))
            frames = self.render_stream.to_host(frames_to_uint8(decoded)[0]).numpy()
        self.frames_emitted += frames.shape[0]
        return frames

    def latents(self, step: ChunkStep) -> np.ndarray:
        """The stepped chunk's latent frames as float32 ``[F, C, h, w]``."""
        latents = step.result.chunk.latents
        with self.render_stream.rendering(step.ready, latents):
            values = self.render_stream.to_host(latents[0].to(torch.float32)).numpy()
        self.frames_emitted += latents.shape[1]
        return values

    def move_state(self, device: torch.device) -> None:
        """Move the stream's state (KV cache, text context, windows, the chunks a prompt switch re-encodes) to
        ``device``; on the device worker. A held session parks it on the CPU and brings it back before its
        next chunk: copies, so the continuation is bit-identical."""
        self.runner.stream.to(device)
        self._recent = deque(Chunk(c.index, c.frame_start, c.latents.to(device)) for c in self._recent)

    def move_decoder_state(self, device: torch.device) -> None:
        """Move the decoder's causal context to ``device``; on the render worker."""
        if self.decoder is not None:
            self.decoder.to(device)

    @property
    def device(self) -> torch.device:
        return self.bundle.transformer.device

    def close(self) -> None:
        """Free the cache, the policy's and hooks' state and the decoder's context (idempotent)."""
        self.runner.close()
        self._recent.clear()
        if self.decoder is not None:
            self.decoder.reset()

    # ------------------------------------------------------------------ internals
    def _embed(self, prompt: str) -> torch.Tensor:
        return self.bundle.prompt_encoder.encode(prompt).to(self.bundle.transformer.device)

    def _apply_prompt_change(self) -> float:
        with self._prompt_lock:
            prompt, self._pending_prompt = self._pending_prompt, None
        if prompt is None:
            return 0.0
        started = time.perf_counter()
        text = self.bundle.transformer.encode_text(self._embed(prompt))
        self.runner.stream.recache(text, list(self._recent))
        self.prompt_version += 1
        return time.perf_counter() - started

    def _remember(self, chunk: Chunk) -> None:
        # Not a prefix rule: block-causally, sink frames stay cached while the frames after them are evicted.
        self._recent.append(chunk)
        self._recent = deque(kept for kept in self._recent if self.runner.stream.recache_reads(kept))


@dataclass(frozen=True)
class HandedDecode:
    """A session's chunk to decode in a batch, and where its render stream handed it over."""

    decode: DecodeCall
    ready: Ready

    @property
    def batch_key(self) -> tuple:
        return self.decode.batch_key


def decode_handed(calls: list[HandedDecode]) -> list[tuple[torch.Tensor, Ready]]:
    """Decode the chunks together on the batch stream, after every session handed its chunk over; each comes
    back with the point where the batch's frames are complete."""
    stream = batch_stream(calls[0].decode.latents.device)
    with stream.rendering([call.ready for call in calls], *(call.decode.latents for call in calls)):
        frames = decode_together([call.decode for call in calls])
        done = stream.mark_ready()
    return [(frame, done) for frame in frames]


def _decode_alone(call: DecodeCall) -> torch.Tensor:
    return decode_together([call])[0]
