"""Declared types of pipeline options: type, finiteness, range and description of every field, in one place.

Options arrive as JSON values (a session's ``pipeline_options`` Struct, a CLI ``--option KEY=VALUE``). The
options dataclasses annotate their fields with these types and carry :data:`STRICT_OPTIONS`, so
:func:`tokentrim_server.pipelines.registry.pipeline_options` checks each value with pydantic before a
session starts: a boolean is not an integer, 2.5 is not an integer, NaN and infinity are no number, and an
unknown option is refused. Constraints between fields stay in each options class's ``validate``. The same
declarations give the JSON Schema that ``GetServerInfo`` publishes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from tokentrim_server.pipelines.schedule import NUM_TRAIN_TIMESTEPS

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
CacheFrames = Annotated[
    int, Field(ge=1, le=MAX_OPTION_FRAMES, description="latent frames the KV cache holds, the sink included")
]
AttentionFrames = Annotated[
    int, Field(ge=1, le=MAX_OPTION_FRAMES, description="latent frames one model call attends to at most")
]
