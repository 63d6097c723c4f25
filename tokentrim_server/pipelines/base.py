"""What every streaming pipeline produces and how a session drives it.

A pipeline is one spec (:class:`PipelineBase` subclass): its ``name``, its options class (types, ranges and
cache rules, see :mod:`tokentrim_server.pipelines.options`), its stream class (one session's state) and the
options a server applies by default. A stream owns its state: the engine asks it for the next chunk as a
:class:`ChunkAttempt` (candidate, rewind, complete) and never writes into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.models.causal_wan import (
    AttentionContext,
    CausalWanTransformer,
    ChunkGeometry,
    ModelCall,
    TextContext,
)
from tokentrim_server.pipelines.noise import NoiseSource
from tokentrim_server.pipelines.schedule import add_noise, denoising_timesteps, to_x0


@dataclass
class Chunk:
    """One finished chunk of latent frames."""

    index: int
    frame_start: int
    latents: torch.Tensor  # [B, F, C, H, W]


CandidateStage = Literal["first_step", "final"]
"""Where a cache policy looks at a chunk: the first denoising step's x0, or the finished chunk."""


@dataclass(frozen=True)
class ChunkAttempt:
    """A stream's next chunk, as a cache policy's runner drives it.

    ``candidate()`` produces the latents at the requested stage; ``rewind()`` puts the stream back where
    ``candidate()`` starts (same keyed noise, the cache as before the attempt, except what the runner prunes
    afterwards), so ``candidate()`` may run again; ``complete(candidate)`` finishes the accepted candidate,
    commits it to the cache and advances the stream.
    """

    index: int
    frame_start: int
    candidate: Callable[[], torch.Tensor]
    rewind: Callable[[], None]
    complete: Callable[[torch.Tensor], Chunk]


CallModel = Callable[[ModelCall], torch.Tensor]
"""Runs one no-grad model call and returns its flow; the engine's scheduler swaps in one that batches the calls
of sessions stepping together (:mod:`tokentrim_server.engine.batching`)."""

Predict = Callable[..., torch.Tensor]
"""``predict(latents, *, gradient_checkpointing=False) -> flow``: one block's differentiable model call at one
denoising step, reading the cache and writing nothing (a session hook's ``Predictor``)."""

StepAdjuster = Callable[[int, torch.Tensor, torch.Tensor, Predict], torch.Tensor]
"""``adjust(step, noisy, flow, predict) -> noisy'``: replaces a first-chunk step's noisy latent (session hooks)."""


def adjusted_x0(
    step: int, timestep: float, noisy: torch.Tensor, flow: torch.Tensor, adjust: StepAdjuster | None, predict: Predict
) -> torch.Tensor:
    """x0 of one block's denoising step; ``adjust`` may replace the noisy latent the update starts from, with the
    prediction already made (the order of FlowMo's official code). An unchanged latent gives the plain x0."""
    latent = noisy if adjust is None else adjust(step, noisy, flow, predict)
    if latent is noisy:
        return to_x0(noisy, flow, timestep)
    # Keep an adjusted float32 latent exact through the update; the block stays in the model's dtype.
    return to_x0(latent, flow, timestep).to(noisy.dtype)


def check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")


def check_latent_shape(latent_shape: tuple[int, int, int], in_channels: int, patch: tuple[int, int, int]) -> None:
    if len(latent_shape) != 3:
        raise ValueError(f"latent_shape must be [C, H, W]; got {list(latent_shape)}")
    channels, height, width = latent_shape
    if channels != in_channels:
        raise ValueError(f"latent_shape channels must be the model's {in_channels}; got {channels}")
    if height <= 0 or width <= 0 or height % patch[1] or width % patch[2]:
        raise ValueError(
            f"latent_shape height and width must be positive multiples of the patch {patch[1]}x{patch[2]}; "
            f"got {height}x{width}"
        )


class StreamBase:
    """State every pipeline's session holds: text context, keyed noise, the KV cache, the block counter.

    Subclasses implement :meth:`begin_chunk` (and say which candidate stages and hooks they support);
    iteration stops after ``num_blocks`` chunks (``None``: never).
    """

    stages: ClassVar[dict[CandidateStage, str | None]] = {"first_step": None, "final": None}
    """Candidate stages, each ``None`` when offered, else why not (the runner's refusal names the policy)."""
    hooks_refusal: ClassVar[str | None] = None
    """Why session hooks cannot take part in this pipeline's first chunk (``None``: they can; both pipelines do)."""

    def __init__(
        self,
        pipeline: PipelineBase,
        text: TextContext,
        latent_shape: tuple[int, int, int],
        noise: NoiseSource,
        num_blocks: int | None,
    ) -> None:
        model = pipeline.model
        self.pipeline_name = pipeline.name
        self.options = pipeline.options
        self.timesteps = pipeline.timesteps
        frames_per_block = self.options.frames_per_block
        self.model = model
        self.text = text
        self.noise = noise
        self.num_blocks = num_blocks
        self.frames_per_block = frames_per_block
        self.batch = text.keys[0].shape[0]
        self.block_shape = (self.batch, frames_per_block, *latent_shape)
        self.tokens_per_frame = model.tokens_per_frame(latent_shape[1], latent_shape[2])
        capacity = self.options.cached_frames_bound(num_blocks)
        self.cache = KVCache(model.num_layers, self.tokens_per_frame, self.options.sink_frames, capacity)
        self.emitted = 0  # chunks produced so far, prefilled ones included
        self.prefilled = 0  # of which given by :meth:`prefill`
        self.call_model: CallModel = self.call_alone

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        if self.done:
            raise StopIteration
        return self.next_chunk()

    @property
    def done(self) -> bool:
        return self.num_blocks is not None and self.emitted >= self.num_blocks

    def next_chunk(self) -> Chunk:
        """The next chunk as the plain pipeline makes it (no policy, no hooks)."""
        attempt = self.begin_chunk(None)
        return attempt.complete(attempt.candidate())

    def begin_chunk(self, stage: CandidateStage | None, adjust: StepAdjuster | None = None) -> ChunkAttempt:
        """Start the next chunk; its candidate is at ``stage`` (``None``: the finished chunk, never inspected).

        ``adjust`` takes part in the denoising steps of this chunk's own block (streams whose ``hooks_refusal``
        is ``None`` only; the runner passes it for the session's first generated chunk).
        """
        raise NotImplementedError

    @property
    def generating(self) -> bool:
        """Whether generation has begun (a chunk was generated, or a subclass has work in flight)."""
        return self.emitted > self.prefilled

    def prefill(self, chunks: Sequence[Chunk]) -> None:
        """Start the session from given clean chunks (video extension): cache them as if the stream had emitted them.

        ``chunks`` must be consecutive blocks starting at the next block (block 0 for a fresh stream), each with
        the stream's block shape ``[B, frames_per_block, C, H, W]``, and must come before the first generated
        chunk. Each is written through the pipeline's own cache-writing path (:meth:`prefill_chunk`), so what
        follows attends to them exactly as to chunks the stream produced; they count as emitted (``emitted``,
        ``done``) but are not yielded. Everything is checked before anything is written.
        """
        if self.generating:
            raise ValueError(
                f"chunks can only be prefilled before the first generated chunk; this stream has started "
                f"generating ({self.emitted - self.prefilled} chunk(s) generated)"
            )
        chunks = list(chunks)
        if not chunks:
            raise ValueError("chunks must hold at least one chunk to prefill")
        if self.num_blocks is not None and self.emitted + len(chunks) > self.num_blocks:
            raise ValueError(
                f"chunks: {len(chunks)} prefilled after {self.emitted} would exceed the stream's num_blocks "
                f"{self.num_blocks}"
            )
        for offset, chunk in enumerate(chunks):
            index = self.emitted + offset
            if chunk.index != index or chunk.frame_start != index * self.frames_per_block:
                raise ValueError(
                    f"chunks must be consecutive blocks from block {self.emitted}: chunks[{offset}] is block "
                    f"{chunk.index} at frame {chunk.frame_start}, expected block {index} at frame "
                    f"{index * self.frames_per_block}"
                )
            if tuple(chunk.latents.shape) != self.block_shape:
                raise ValueError(
                    f"chunks[{offset}].latents must have the stream's block shape {list(self.block_shape)}; "
                    f"got {list(chunk.latents.shape)}"
                )
        for chunk in chunks:
            latents = chunk.latents.to(device=self.model.device, dtype=self.model.dtype)
            self.prefill_chunk(Chunk(chunk.index, chunk.frame_start, latents))
            self.prefilled += 1

    def prefill_chunk(self, chunk: Chunk) -> None:
        """Write one checked chunk (the next block) into the cache as the pipeline would, and advance ``emitted``."""
        raise NotImplementedError

    def recache(self, text: TextContext, chunks: Sequence[Chunk]) -> None:
        """Switch to a new prompt at a chunk boundary, block-causally (this project's own recache).

        ``chunks`` are the emitted chunks in order (at least those :meth:`recache_reads`); those whose frames are
        still cached, sink included, are written again under the new text, chunk by chunk through the pipeline's
        own cache-writing call, so each attends to the ones rewritten before it and to itself, and the next chunk
        attends to a context consistent with the new prompt. Positions a cache policy pruned come back whole
        (the recent context is rebuilt, not edited).
        """
        cached = set(self.cache.frames)
        self.text = text
        self.cache.reset()
        for chunk in chunks:
            if chunk.frame_start in cached:
                self.rewrite_chunk(chunk)

    def recache_reads(self, chunk: Chunk) -> bool:
        """Whether a prompt switch now would read emitted ``chunk`` (a session keeps those, and only those)."""
        return chunk.frame_start in self.cache.frames

    def rewrite_chunk(self, chunk: Chunk) -> None:
        """Write an emitted chunk's clean latents into the cache again (used by :meth:`recache`)."""
        raise NotImplementedError

    def to(self, device: torch.device) -> None:
        """Move the session's state (KV cache, text context) to ``device``; back to the model's before use."""
        self.cache.to(device)
        self.text.to(device)

    def close(self) -> None:
        """Free the session's cache and text context."""
        self.cache.clear()
        self.text.keys.clear()
        self.text.values.clear()

    def initial_noise(self, block: int) -> torch.Tensor:
        return self.noise.initial(block, self.block_shape, self.model.device, self.model.dtype)

    def renoise(self, block: int, step: int, x0: torch.Tensor, timestep: float) -> torch.Tensor:
        """Bring ``block``'s clean prediction to denoising step ``step`` with its keyed noise."""
        noise = self.noise.renoise(block, step, tuple(x0.shape), self.model.device, self.model.dtype)
        return add_noise(x0, noise, timestep)

    def call(
        self, latents: torch.Tensor, timesteps: torch.Tensor, frame_start: int, context: AttentionContext
    ) -> torch.Tensor:
        """One model call (through :attr:`call_model`); returns the flow prediction."""
        return self.call_model(ModelCall(latents, timesteps, self.text, context, frame_start))

    @property
    def step_cost(self) -> int:
        """The work of one chunk, denoising steps x tokens of a block: how a batched call's time is shared out."""
        return len(self.timesteps) * self.frames_per_block * self.tokens_per_frame

    def call_alone(self, call: ModelCall) -> torch.Tensor:
        """The model call on its own (the default :attr:`call_model`)."""
        return self.model.forward_many_no_grad([call])[0]

    def call_differentiable(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        frame_start: int,
        context: AttentionContext,
        gradient_checkpointing: bool = False,
    ) -> torch.Tensor:
        """:meth:`call` without its ``no_grad``: under grad mode the flow is differentiable w.r.t. ``latents``.

        For session hooks (FlowMo). The parameters must be frozen (``CausalWanTransformer`` freezes them), so
        ``latents`` stays the only leaf. ``context`` must not write into the session's cache: an in-place write
        of a tensor that carries autograd history would tie the cache buffers to the graph (the engine passes a
        scratch view). ``gradient_checkpointing``: see :meth:`CausalWanTransformer.forward`.
        """
        if any(parameter.requires_grad for parameter in self.model.parameters()):
            raise RuntimeError("a differentiable call needs frozen model parameters (requires_grad_(False))")
        return self.model(latents, timesteps, self.text, context, frame_start, gradient_checkpointing)

    def rotary(self, frame_start: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = self.block_shape[-2:]
        _, ph, pw = self.model.patch_size
        geo = ChunkGeometry(frame_start, num_frames, height // ph, width // pw)
        return self.model.rotary(geo, self.model.device)


class PipelineBase:
    """A named pipeline over one model: validated options, its warped timesteps, and ``open`` for sessions.

    The pipeline's spec: subclasses set ``name``, ``options_class`` (a
    :class:`~tokentrim_server.pipelines.options.PipelineOptions`), ``stream_class`` and ``serving_defaults``
    (options a server applies unless a session overrides them, e.g. a window so that sessions can stream
    without end). Register the class in :data:`tokentrim_server.pipelines.registry.PIPELINES`.
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type]
    stream_class: ClassVar[type[StreamBase]]
    serving_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: CausalWanTransformer, options: object | None = None) -> None:
        self.model = model
        self.options = options or self.options_class()
        self.options.validate()
        self.timesteps = denoising_timesteps(
            self.options.denoising_steps, self.options.timestep_shift, self.options.warp_denoising_step
        )

    def open(
        self,
        prompt_embeds: torch.Tensor,
        latent_shape: tuple[int, int, int],
        noise: NoiseSource,
        num_blocks: int | None = None,
    ) -> StreamBase:
        """Start a session from prompt embeddings ``[B, L, text_dim]``; ``num_blocks=None`` never ends."""
        check_latent_shape(latent_shape, self.model.config.in_channels, self.model.patch_size)
        if num_blocks is not None:
            check_positive("num_blocks", num_blocks)
        else:
            self.options.check_unbounded()
        return self.stream_class(self, self.model.encode_text(prompt_embeds), latent_shape, noise, num_blocks)
