"""Self Forcing: chunk-by-chunk few-step denoising against a rolling KV cache.

Per block of ``frames_per_block`` latent frames: start from the block's initial noise, run the warped
denoising steps (each call predicts flow, x0 = x_t - sigma v, then x0 is renoised to the next step with
the block's keyed noise), emit x0 of the last step, and write the cache with one more call on that clean
chunk at ``t = context_noise``. In local mode the cache keeps a window of ``local_attn_frames`` frames
*including* the block being denoised, with the first ``sink_frames`` frames kept for ever.

A prompt switch re-encodes the cache in the session's ``recache`` mode (:mod:`tokentrim_server.pipelines.recache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tokentrim_server.cache.contexts import BlockCausalContext
from tokentrim_server.cache.scratch import ScratchView
from tokentrim_server.models.causal_wan import TextContext
from tokentrim_server.pipelines import base
from tokentrim_server.pipelines.base import CandidateStage, Chunk, ChunkAttempt, PipelineBase, StepAdjuster, StreamBase
from tokentrim_server.pipelines.options import GlobalSink, LocalAttentionFrames, PipelineOptions, Recache, SinkFrames
from tokentrim_server.pipelines.recache import LongLiveRecache, longlive_recache


@dataclass(frozen=True)
class SelfForcingOptions(PipelineOptions):
    """Options of the Self Forcing pipeline (defaults: the official 4-step distilled model)."""

    local_attn_frames: LocalAttentionFrames = -1  # -1: global attention, no eviction
    sink_frames: SinkFrames = 0
    recache: Recache = "block_causal"  # official Self Forcing has no prompt switch: this project's own design
    global_sink: GlobalSink = True

    def validate(self) -> None:
        super().validate()
        if not self.global_sink and self.recache != "longlive":
            raise ValueError(f"global_sink applies to recache 'longlive' only; got recache {self.recache!r}")
        if self.local_attn_frames != -1:
            minimum = self.frames_per_block + self.sink_frames + 1
            if self.local_attn_frames < minimum:
                raise ValueError(
                    f"local_attn_frames must be -1 (global) or >= frames_per_block + sink_frames + 1 "
                    f"= {minimum}; got {self.local_attn_frames}"
                )

    @property
    def unbounded(self) -> bool:
        return self.local_attn_frames != -1

    def check_unbounded(self) -> None:
        if not self.unbounded:
            raise ValueError("an unbounded stream needs local attention (local_attn_frames != -1)")

    def window_frames_bound(self) -> int | None:
        """The local window holds the committed frames plus the block being written; global: no bound."""
        return self.local_attn_frames if self.unbounded else None


class SelfForcingStream(StreamBase):
    """One Self Forcing session. A chunk is prepare_block, first_step, finish, commit.

    A ``first_step`` candidate is the x0 of the block's first denoising call; rewinding it discards that call's
    pending K/V, so a regeneration costs one model call. A ``final`` candidate is the finished block; rewinding
    it discards the last call's pending K/V and the steps run again from the block's keyed noise.
    """

    @property
    def block(self) -> int:
        return self.emitted

    @property
    def frame_start(self) -> int:
        return self.block * self.frames_per_block

    def begin_chunk(self, stage: CandidateStage | None, adjust: StepAdjuster | None = None) -> ChunkAttempt:
        self.prepare_block()

        def finished() -> torch.Tensor:
            return self.finish(self.first_step(adjust), adjust)

        if stage == "first_step":
            candidate, complete = (lambda: self.first_step(adjust)), (lambda x0: self.commit(self.finish(x0, adjust)))
        else:
            candidate, complete = finished, self.commit
        return ChunkAttempt(self.block, self.frame_start, candidate, self.cache.discard_pending, complete)

    # ------------------------------------------------------------------ the steps of one block
    def prepare_block(self) -> None:
        """Make room in the local window before the block's first call (the official eviction rule)."""
        if self.options.unbounded:
            self.cache.evict_to(self.options.local_attn_frames - self.frames_per_block)

    def first_step(self, adjust: StepAdjuster | None = None) -> torch.Tensor:
        """The block's first denoising call from its initial noise; returns the x0 prediction."""
        return self._step(0, self.initial_noise(self.block), adjust)

    def finish(self, x0: torch.Tensor, adjust: StepAdjuster | None = None) -> torch.Tensor:
        """The remaining denoising steps after the first; returns the final x0."""
        for step, timestep in enumerate(self.timesteps[1:], start=1):
            x0 = self._step(step, self.renoise(self.block, step, x0, timestep), adjust)
        return x0

    def commit(self, x0: torch.Tensor) -> Chunk:
        """Write the clean block into the cache (a call at ``context_noise``) and advance."""
        self.block_call(x0, self.options.context_noise)
        self.cache.commit(self.frame_start, self.frames_per_block)
        chunk = Chunk(self.block, self.frame_start, x0)
        self.emitted += 1
        return chunk

    def prefill_chunk(self, chunk: Chunk) -> None:
        """The block's eviction rule, then its cache-writing call and commit, exactly as after generating it.

        So prefilling blocks ``0..k-1`` with a run's own chunks and generating block ``k`` reproduces that run's
        block ``k`` (global or local attention alike): every call sees the cache it saw in the run.
        """
        self.prepare_block()
        self.commit(chunk.latents)

    def rewrite_chunk(self, chunk: Chunk) -> None:
        self.rewrite_frames(chunk.latents, chunk.frame_start)

    def rewrite_frames(self, latents: torch.Tensor, frame_start: int) -> None:
        """Write clean frames from ``frame_start`` into the cache in one call at ``context_noise`` and commit them."""
        self.block_call(latents, self.options.context_noise, frame_start)
        self.cache.commit(frame_start, latents.shape[1])

    def recache(self, text: TextContext, chunks: Sequence[Chunk]) -> None:
        """Switch to a new prompt in the session's ``recache`` mode (``longlive``: see :meth:`recache_longlive`)."""
        if self.options.recache == "longlive":
            self.recache_longlive(text, chunks)
        else:
            super().recache(text, chunks)

    def recache_longlive(self, text: TextContext, chunks: Sequence[Chunk]) -> None:
        """LongLive v1.0's recache: the last frames (:func:`longlive_recache`) re-encoded in one unmasked call.

        The call writes its frames' K/V behind what the cache keeps (the old sink under ``global_sink``, else
        nothing) and attends to all of it and to every frame of the call, later ones included. Positions a cache
        policy pruned from the re-encoded frames come back whole; evicted frames inside the window come back too.
        """
        plan = self.longlive_plan()
        self.text = text
        if plan.keeps_sink:
            self.cache.drop_from(self.cache.sink_end)
        else:
            self.cache.reset(sink_start=plan.first_frame)
        if plan.first_frame < self.frame_start:
            self.rewrite_frames(frames_between(chunks, plan.first_frame, self.frame_start), plan.first_frame)

    def longlive_plan(self) -> LongLiveRecache:
        """What a LongLive recache before the next block writes."""
        options = self.options
        return longlive_recache(self.frame_start, options.local_attn_frames, options.sink_frames, options.global_sink)

    def recache_reads(self, chunk: Chunk) -> bool:
        if self.options.recache == "longlive":
            return chunk.frame_start + chunk.latents.shape[1] > self.longlive_plan().first_frame
        return super().recache_reads(chunk)

    def predictor(self, timestep: float) -> base.Predict:
        """The current block's model call at ``timestep``, differentiable, reading the cache, writing nothing."""

        def predict(latents: torch.Tensor, *, gradient_checkpointing: bool = False) -> torch.Tensor:
            # A fresh scratch view per call: predictions awaiting one backward never share K/V.
            rope = self.rotary(self.frame_start, latents.shape[1])
            context = BlockCausalContext(ScratchView(self.cache), rope)
            timesteps = torch.full(latents.shape[:2], timestep, device=latents.device, dtype=torch.float32)
            return self.call_differentiable(latents, timesteps, self.frame_start, context, gradient_checkpointing)

        return predict

    # ------------------------------------------------------------------ model calls
    def _step(self, step: int, noisy: torch.Tensor, adjust: StepAdjuster | None) -> torch.Tensor:
        """One denoising step: the model's flow at ``noisy``, then x0 (``adjust``: see :func:`adjusted_x0`)."""
        timestep = self.timesteps[step]
        flow = self.block_call(noisy, timestep)
        return base.adjusted_x0(step, timestep, noisy, flow, adjust, self.predictor(timestep))

    def block_call(self, latents: torch.Tensor, timestep: float, frame_start: int | None = None) -> torch.Tensor:
        """One no-grad model call on the current block (or the block at ``frame_start``); returns the flow."""
        frame_start = self.frame_start if frame_start is None else frame_start
        context = BlockCausalContext(self.cache, self.rotary(frame_start, latents.shape[1]))
        timesteps = torch.full(latents.shape[:2], timestep, device=latents.device, dtype=torch.float32)
        return self.call(latents, timesteps, frame_start, context)


def frames_between(chunks: Sequence[Chunk], start: int, end: int) -> torch.Tensor:
    """Latent frames ``start .. end-1`` cut from the emitted ``chunks`` that hold them (``[B, end-start, C, H, W]``)."""
    covering = sorted(
        (c for c in chunks if c.frame_start < end and c.frame_start + c.latents.shape[1] > start),
        key=lambda c: c.frame_start,
    )
    starts = [c.frame_start for c in covering]
    ends = [c.frame_start + c.latents.shape[1] for c in covering]
    if not covering or starts[0] > start or ends[-1] < end or starts[1:] != ends[:-1]:
        raise ValueError(f"the emitted chunks must hold latent frames {start}..{end - 1} without a gap")
    latents = torch.cat([c.latents for c in covering], dim=1)
    return latents[:, start - starts[0] : end - starts[0]]


class SelfForcingPipeline(PipelineBase):
    name = "self_forcing"
    options_class = SelfForcingOptions
    stream_class = SelfForcingStream
    # The official default is global attention, which only bounded sessions can use: a server streams with
    # a 21-frame local window (the official local-attention setting) unless told otherwise.
    serving_defaults: ClassVar[dict[str, Any]] = {"local_attn_frames": 21}
