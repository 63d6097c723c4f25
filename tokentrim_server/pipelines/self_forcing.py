"""Self Forcing: chunk-by-chunk few-step denoising against a rolling KV cache.

Per block of ``frames_per_block`` latent frames: start from the block's initial noise, run the warped
denoising steps (each call predicts flow, x0 = x_t - sigma v, then x0 is renoised to the next step with
the block's keyed noise), emit x0 of the last step, and write the cache with one more call on that clean
chunk at ``t = context_noise``. In local mode the cache keeps a window of ``local_attn_frames`` frames
*including* the block being denoised, with the first ``sink_frames`` frames kept for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokentrim_server.cache.contexts import BlockCausalContext
from tokentrim_server.pipelines.base import Chunk, PipelineBase, StreamBase, check_positive
from tokentrim_server.pipelines.option_types import (
    STRICT_OPTIONS,
    ContextNoise,
    DenoisingSteps,
    FramesPerBlock,
    LocalAttentionFrames,
    SinkFrames,
    TimestepShift,
    WarpDenoisingStep,
)
from tokentrim_server.pipelines.schedule import denoising_timesteps, to_x0


@dataclass(frozen=True)
class SelfForcingOptions:
    """Options of the Self Forcing pipeline (defaults: the official 4-step distilled model)."""

    __pydantic_config__ = STRICT_OPTIONS

    frames_per_block: FramesPerBlock = 3
    denoising_steps: DenoisingSteps = (1000, 750, 500, 250)
    warp_denoising_step: WarpDenoisingStep = True
    timestep_shift: TimestepShift = 5.0
    context_noise: ContextNoise = 0.0
    local_attn_frames: LocalAttentionFrames = -1  # -1: global attention, no eviction
    sink_frames: SinkFrames = 0

    def validate(self) -> None:
        check_positive("frames_per_block", self.frames_per_block)
        denoising_timesteps(self.denoising_steps, self.timestep_shift, self.warp_denoising_step)
        if not 0 <= self.context_noise < 1000:
            raise ValueError(f"context_noise must be in [0, 1000); got {self.context_noise}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0; got {self.sink_frames}")
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


class SelfForcingStream(StreamBase):
    """One Self Forcing session. ``next_chunk`` = prepare_block, first_step, finish, commit."""


    @property
    def block(self) -> int:
        return self.emitted

    @property
    def frame_start(self) -> int:
        return self.block * self.frames_per_block

    def next_chunk(self) -> Chunk:
        self.prepare_block()
        return self.commit(self.finish(self.first_step()))

    # ------------------------------------------------------------------ the steps of one block
    def prepare_block(self) -> None:
        """Make room in the local window before the block's first call (the official eviction rule)."""
        if self.options.unbounded:
            self.cache.evict_to(self.options.local_attn_frames - self.frames_per_block)

    def first_step(self) -> torch.Tensor:
        """The block's first denoising call from its initial noise; returns the x0 prediction."""
        return self._denoise(self.initial_noise(self.block), self.timesteps[0])

    def finish(self, x0: torch.Tensor) -> torch.Tensor:
        """The remaining denoising steps after the first; returns the final x0."""
        for step, timestep in enumerate(self.timesteps[1:], start=1):
            x0 = self._denoise(self.renoise(self.block, step, x0, timestep), timestep)
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
        self.block_call(chunk.latents, self.options.context_noise, chunk.frame_start)
        self.cache.commit(chunk.frame_start, chunk.latents.shape[1])

    # ------------------------------------------------------------------ model calls
    def _denoise(self, noisy: torch.Tensor, timestep: float) -> torch.Tensor:
        return to_x0(noisy, self.block_call(noisy, timestep), timestep)

    def block_call(self, latents: torch.Tensor, timestep: float, frame_start: int | None = None) -> torch.Tensor:
        """One no-grad model call on the current block (or the block at ``frame_start``); returns the flow."""
        frame_start = self.frame_start if frame_start is None else frame_start
        context = BlockCausalContext(self.cache, self.rotary(frame_start, latents.shape[1]))
        timesteps = torch.full(latents.shape[:2], timestep, device=latents.device, dtype=torch.float32)
        return self.call(latents, timesteps, frame_start, context)


class SelfForcingPipeline(PipelineBase):
    name = "self_forcing"
    options_class = SelfForcingOptions
    stream_class = SelfForcingStream
