"""Rolling Forcing: joint denoising of a rolling window of blocks, with an attention sink.

The window holds as many blocks as there are denoising steps, each at its own step (the newest at the
first, the oldest at the last). One model call denoises the whole window; every block not at its last
step is then renoised to its next step with its keyed noise, and the oldest, now clean, is emitted. After
each window a cache-writing call stores the window's first block (its x0, at ``t = context_noise``).
The first block is the attention sink: stored un-roped, never evicted, re-rotated at each use to sit just
before the working cache frames it is shown with. Windows grow at the start of a stream and, for a
bounded run, shrink at its end; an unbounded stream never shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from tokentrim_server.cache.contexts import RollingWindowContext, RollingWriteContext
from tokentrim_server.pipelines import base
from tokentrim_server.pipelines.base import CandidateStage, Chunk, ChunkAttempt, PipelineBase, StepAdjuster, StreamBase
from tokentrim_server.pipelines.options import AttentionFrames, CacheFrames, DenoisingSteps, PipelineOptions
from tokentrim_server.pipelines.schedule import to_x0


@dataclass(frozen=True)
class RollingForcingOptions(PipelineOptions):
    """Options of the Rolling Forcing pipeline (defaults: the official 5-step distilled model)."""

    denoising_steps: DenoisingSteps = (1000, 800, 600, 400, 200)
    cache_frames: CacheFrames = 24  # frames the cache holds, sink included
    attention_frames: AttentionFrames = 21  # frames one call attends to at most

    @property
    def sink_frames(self) -> int:
        """The sink is exactly the first block."""
        return self.frames_per_block

    @property
    def window_frames(self) -> int:
        return self.frames_per_block * len(self.denoising_steps)

    @property
    def frames_ahead(self) -> int:
        """The window denoises this many frames past the last emitted block."""
        return self.window_frames

    def validate(self) -> None:
        super().validate()
        minimum = self.window_frames + self.sink_frames
        if self.attention_frames < minimum:
            raise ValueError(
                f"attention_frames must be >= the window ({self.window_frames}) plus the sink "
                f"({self.sink_frames}) = {minimum}; got {self.attention_frames}"
            )
        if self.cache_frames < self.attention_frames:
            raise ValueError(
                f"cache_frames must be >= attention_frames ({self.attention_frames}); got {self.cache_frames}"
            )

    def window_frames_bound(self) -> int | None:
        """The write evicts down to ``cache_frames - frames_per_block`` before storing a block."""
        return self.cache_frames


@dataclass
class _Block:
    """A block inside the window: its noisy latents at denoising step ``step``."""

    index: int
    step: int
    noisy: torch.Tensor


class RollingForcingStream(StreamBase):
    """One Rolling Forcing session; a chunk runs windows until a block is final.

    A block has no first step of its own (it is denoised jointly with the blocks after it), so its only
    candidate is the final x0 of the window that finalises it. Rewinding restores the window as it was
    before that window (its blocks, their steps and noisy latents, the block counter) and drops the cache
    entry that window wrote for the block; every block of the window then starts again from the same keyed
    noise. The rewind is exact: a block ``b > 0`` first enters the cache in the window that finalises it,
    and that window's denoising call only reads frames newer than any the window's write evicts, so dropping
    frames ``>= b`` restores the cache the window saw, minus what a policy pruned.

    Session hooks take part in the chunk's own steps: a block takes its step ``s`` in the ``s + 1``-th window
    it is in, always as the window's oldest block. There the hook is offered that block's slice of the joint
    call (its noisy latent and flow) and a differentiable call that varies that slice only, the other blocks
    of the window held at their noisy latents; the block's update uses the latent the hooks return with the
    prediction already made, and the other blocks' updates are the plain ones. A stream's first window holds
    its first block alone, so its first step is exactly a one-block call, as in Self Forcing.
    """

    stages: ClassVar[dict[CandidateStage, str | None]] = {
        "first_step": "Rolling Forcing denoises blocks jointly and can only inspect final blocks (configure the "
        "policy with candidate=final)",
        "final": None,
    }

    def __init__(self, pipeline: PipelineBase, text, latent_shape, noise, num_blocks) -> None:
        super().__init__(pipeline, text, latent_shape, noise, num_blocks)
        self.window: list[_Block] = []
        self.next_block = 0

    @property
    def last_step(self) -> int:
        return len(self.timesteps) - 1

    def begin_chunk(self, stage: CandidateStage | None, adjust: StepAdjuster | None = None) -> ChunkAttempt:
        # Every window until the chunk is final has the chunk's block as its oldest: ``adjust`` takes part there.
        while not self._next_window_finalises():
            self.step_window(adjust)
        snapshot = self._snapshot()
        index = self.window[0].index if self.window else self.next_block
        frame_start = index * self.frames_per_block

        def candidate() -> torch.Tensor:
            chunk = self.step_window(adjust)
            if chunk is None:  # the (restored) window finalises this block by construction
                raise RuntimeError(f"the window of block {index} emitted no block")
            return chunk.latents

        def rewind() -> None:
            self._restore(snapshot)
            self.cache.drop_from(frame_start)

        return ChunkAttempt(index, frame_start, candidate, rewind, lambda x0: Chunk(index, frame_start, x0))

    def step_window(self, adjust: StepAdjuster | None = None) -> Chunk | None:
        """Run one window; returns the block that became final in it, if any. ``adjust`` takes part in the
        oldest block's step (see the class)."""
        if self.num_blocks is None or self.next_block < self.num_blocks:
            self.window.append(_Block(self.next_block, 0, self.initial_noise(self.next_block)))
            self.next_block += 1
        oldest = self.window[0]
        final = oldest.step == self.last_step
        x0 = self._denoise_window(adjust)
        for block, clean in zip(self.window, x0, strict=True):
            if block.step < self.last_step:
                block.step += 1
                block.noisy = self.renoise(block.index, block.step, clean, self.timesteps[block.step])
        self._write_cache(oldest.index, x0[0])
        if not final:
            return None
        self.window.pop(0)
        self.emitted += 1
        return Chunk(oldest.index, oldest.index * self.frames_per_block, x0[0])

    @property
    def generating(self) -> bool:
        return super().generating or bool(self.window) or self.next_block > self.emitted

    def to(self, device: torch.device) -> None:
        super().to(device)
        for block in self.window:
            block.noisy = block.noisy.to(device)

    def _next_window_finalises(self) -> bool:
        """Whether the next :meth:`step_window` emits a block (its oldest block is at the last step)."""
        oldest_step = self.window[0].step if self.window else 0  # an empty window admits a block at step 0
        return oldest_step == self.last_step

    def _snapshot(self) -> tuple[list[_Block], int, int]:
        # A window mutates its blocks (step, noisy) in place, so keep copies; tensors are replaced, never
        # written into, so sharing them is safe.
        return [replace(block) for block in self.window], self.next_block, self.emitted

    def _restore(self, snapshot: tuple[list[_Block], int, int]) -> None:
        window, self.next_block, self.emitted = snapshot
        self.window = [replace(block) for block in window]

    def prefill_chunk(self, chunk: Chunk) -> None:
        """Store the block's clean K/V with the pipeline's cache-writing call and advance past it.

        The cache then holds exactly what a plain run holds after emitting the same blocks (a block other than
        the sink is written once, when final, and the sink's last write is of its final x0). The block after
        the prefill is *not* the plain run's, though: in a plain run it was denoised jointly with the
        preceding blocks while they were still noisy in the window, whereas after a prefill the window starts
        empty at that block and grows from it, attending to the given blocks as clean cached context.
        """
        self._write_cache(chunk.index, chunk.latents)
        self.next_block += 1
        self.emitted += 1

    def rewrite_chunk(self, chunk: Chunk) -> None:
        self._write_cache(chunk.index, chunk.latents)

    # ------------------------------------------------------------------ model calls
    def _denoise_window(self, adjust: StepAdjuster | None = None) -> list[torch.Tensor]:
        """One call over the whole window; returns each block's x0 prediction (``adjust``: the oldest block's)."""
        fpb = self.frames_per_block
        first = self.window[0].index * fpb
        latents = torch.cat([block.noisy for block in self.window], dim=1)
        per_frame = [self.timesteps[block.step] for block in self.window for _ in range(fpb)]
        timesteps = torch.tensor(per_frame, dtype=torch.float32, device=latents.device).expand(self.batch, -1)
        flow = self.call(latents, timesteps, first, self._window_context(first, latents.shape[1]))
        oldest, *rest = self.window
        predict = self._oldest_predictor(latents[:, fpb:], timesteps, first)
        timestep = self.timesteps[oldest.step]
        oldest_x0 = base.adjusted_x0(oldest.step, timestep, oldest.noisy, flow[:, :fpb], adjust, predict)
        return [oldest_x0] + [
            to_x0(block.noisy, velocity, self.timesteps[block.step])
            for block, velocity in zip(rest, flow.split(fpb, 1)[1:], strict=True)
        ]

    def _oldest_predictor(self, held: torch.Tensor, timesteps: torch.Tensor, first_frame: int) -> base.Predict:
        """The window's call, differentiable in the oldest block's latents, the other blocks held at ``held``;
        returns the oldest block's flow. It reads the cache and writes nothing (the window's calls never write)."""

        def predict(latents: torch.Tensor, *, gradient_checkpointing: bool = False) -> torch.Tensor:
            window = torch.cat([latents.to(held.dtype), held], dim=1)
            context = self._window_context(first_frame, window.shape[1])
            flow = self.call_differentiable(window, timesteps, first_frame, context, gradient_checkpointing)
            return flow[:, : latents.shape[1]]

        return predict

    def _window_context(self, first_frame: int, num_frames: int) -> RollingWindowContext:
        rope = self.rotary(first_frame, num_frames)
        if first_frame == 0:
            return RollingWindowContext(self.cache, rope)
        budget = self.options.attention_frames - num_frames - self.options.sink_frames
        recent_start = self.cache.recent_start(budget)
        shown = [f for f in self.cache.frames if f >= self.options.sink_frames][-budget:] if budget > 0 else []
        sink_at = (shown[0] if shown else first_frame) - self.options.sink_frames
        return RollingWindowContext(self.cache, rope, self.rotary(sink_at, self.options.sink_frames), recent_start)

    def _write_cache(self, block: int, x0: torch.Tensor) -> None:
        """Store ``block``'s clean K/V (rewriting it if it is already the newest cached block)."""
        fpb = self.frames_per_block
        frame_start = block * fpb
        self.cache.drop_from(frame_start)
        self.cache.evict_to(self.options.cache_frames - fpb)
        stores_sink = block == 0
        span = self.options.attention_frames
        cached = len(self.cache.frames)
        sink_rope = None
        if not stores_sink and cached + fpb <= span:
            sink_rope = self.rotary(0, self.options.sink_frames)
        span_start = self.cache.recent_start(span - fpb)
        context = RollingWriteContext(self.cache, self.rotary(frame_start, fpb), stores_sink, sink_rope, span_start)
        timesteps = torch.full(x0.shape[:2], self.options.context_noise, dtype=torch.float32, device=x0.device)
        self.call(x0, timesteps, frame_start, context)
        self.cache.commit(frame_start, fpb)


class RollingForcingPipeline(PipelineBase):
    name = "rolling_forcing"
    options_class = RollingForcingOptions
    stream_class = RollingForcingStream
