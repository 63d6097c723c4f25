"""Pipeline options: the declared type, finiteness, range and description of every field, and their base class.

Options arrive as JSON values (a session's ``pipeline_options`` Struct, a CLI ``--option KEY=VALUE``). The
options dataclasses annotate their fields with these types and carry :data:`STRICT_OPTIONS`, so
:func:`tokentrim_server.pipelines.registry.pipeline_options` checks each value with pydantic before a
session starts: a boolean is not an integer, 2.5 is not an integer, NaN and infinity are no number, and an
unknown option is refused. Constraints between fields stay in each options class's ``validate``. The same
declarations give the JSON Schema that ``GetServerInfo`` publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field

from tokentrim_server.pipelines.base import check_positive
from tokentrim_server.pipelines.recache import RecacheMode
from tokentrim_server.pipelines.schedule import NUM_TRAIN_TIMESTEPS, denoising_timesteps

STRICT_OPTIONS = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
# Wan 2.1's rotary tables cover 1024 latent frames; no frame count of an option can usefully exceed them.
MAX_OPTION_FRAMES = 1024

FramesPerBlock = Annotated[
    int, Field(ge=1, le=MAX_OPTION_FRAMES, description="latent frames per chunk (the model was trained with one value)")
]
DenoisingSteps = Annotated[
    tuple[Annotated[int, Field(gt=0, le=NUM_TRAIN_TIMESTEPS)], ...],
    Field(min_length=1, description="the distilled schedule: strictly decreasing timesteps in (0, 1000]"),
]
WarpDenoisingStep = Annotated[
    bool, Field(description="read each step off the shifted 1000-point training grid (the official schedule)")
]
TimestepShift = Annotated[float, Field(gt=0, le=100, description="flow-matching shift of the warped schedule")]
ContextNoise = Annotated[
    float, Field(ge=0, lt=NUM_TRAIN_TIMESTEPS, description="timestep at which clean chunks are written to the cache")
]
LocalAttentionFrames = Annotated[
    int,
    Field(ge=-1, le=MAX_OPTION_FRAMES,
          description="local attention window in latent frames, the block being denoised included (-1: global)"),
]
SinkFrames = Annotated[
    int, Field(ge=0, le=MAX_OPTION_FRAMES, description="first latent frames kept in the cache for ever")
]
Recache = Annotated[
    RecacheMode,
    Field(description="how a prompt switch re-encodes the cache: 'longlive' (LongLive v1.0: one joint call over the "
                      "last local_attn_frames frames) or 'block_causal' (every cached frame, chunk by chunk)"),
]
GlobalSink = Annotated[
    bool,
    Field(description="recache 'longlive' only (LongLive's global_sink): the sink keeps its first K/V across prompt "
                      "switches; false: a switch past the window makes the re-encoded window's first frames the sink"),
]
CacheFrames = Annotated[
    int, Field(ge=1, le=MAX_OPTION_FRAMES, description="latent frames the KV cache holds, the sink included")
]
AttentionFrames = Annotated[
    int, Field(ge=1, le=MAX_OPTION_FRAMES, description="latent frames one model call attends to at most")
]


@dataclass(frozen=True)
class PipelineOptions:
    """What every pipeline's options have: the block size and the few-step schedule, and the cache rules.

    A pipeline's options class subclasses this (changing defaults where its distilled model differs) and
    states its cache rules: :meth:`cached_frames_bound` (what admission reserves and the cache allocates),
    :attr:`frames_ahead` (latent frames the stream runs ahead of its last emitted chunk) and
    :meth:`check_unbounded`.
    """

    __pydantic_config__ = STRICT_OPTIONS

    frames_per_block: FramesPerBlock = 3
    denoising_steps: DenoisingSteps = (1000, 750, 500, 250)
    warp_denoising_step: WarpDenoisingStep = True
    timestep_shift: TimestepShift = 5.0
    context_noise: ContextNoise = 0.0

    def validate(self) -> None:
        """Constraints between options (each option's own type and range are declared on its field)."""
        check_positive("frames_per_block", self.frames_per_block)
        denoising_timesteps(self.denoising_steps, self.timestep_shift, self.warp_denoising_step)
        if not 0 <= self.context_noise < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"context_noise must be in [0, {NUM_TRAIN_TIMESTEPS}); got {self.context_noise}")

    @property
    def sink_frames(self) -> int:
        """First latent frames the cache keeps for ever."""
        return 0

    @property
    def frames_ahead(self) -> int:
        """Latent frames beyond the last emitted chunk that the stream already holds positions for."""
        return 0

    def check_unbounded(self) -> None:
        """Raise ``ValueError`` when a stream under these options cannot run without end."""

    def window_frames_bound(self) -> int | None:
        """Most latent frames the cache holds under the pipeline's window rule (``None``: no window)."""
        raise NotImplementedError

    def cached_frames_bound(self, chunks: int | None) -> int:
        """Most latent frames a session's cache holds at once, pending ones included (``None``: unbounded).

        What admission control reserves and what the session's cache allocates, once.
        """
        if chunks is None:
            self.check_unbounded()
        session = None if chunks is None else chunks * self.frames_per_block  # never more than it generates
        bounds = [bound for bound in (self.window_frames_bound(), session) if bound is not None]
        if not bounds:
            raise ValueError(f"{type(self).__name__} allows unbounded sessions but states no cache window")
        return min(bounds)
