"""Prompt-switch recache modes: what a switch before the block at latent frame ``frame_start`` re-encodes.

A prompt switch happens at a chunk boundary. The cross-attention switches to the new prompt at once; the
self-attention cache holds K/V computed under the old one, so the switch re-encodes recent frames under the
new prompt at ``t = context_noise`` (the clean-cache timestep), at their own absolute positions, from the
emitted latents. Two modes (a per-session pipeline option, ``recache``):

- ``block_causal`` (this project's own design; neither official Self Forcing nor official Rolling Forcing
  supports a prompt change): every frame still cached, sink included, is written again chunk by chunk, in
  order, through the pipeline's own cache-writing call, so each chunk attends to the chunks rewritten before
  it and to itself, exactly as when it was first written.
- ``longlive`` (LongLive v1.0's ``_recache_after_switch``, Self Forcing streams only): one joint model call,
  unmasked, over the last ``min(local_attn_frames, frame_start)`` frames; :func:`longlive_recache` says
  which of them are written and whether the sink keeps its old K/V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RecacheMode = Literal["block_causal", "longlive"]


@dataclass(frozen=True)
class LongLiveRecache:
    """The frames a LongLive recache writes: ``first_frame`` up to the switch, in one call.

    ``keeps_sink``: the cached sink stays as it is (K/V from the prompt it was written under) and the call
    attends to it; otherwise the cache is emptied first and the call's first ``sink_frames`` frames become
    the sink.
    """

    first_frame: int
    keeps_sink: bool


def longlive_recache(frame_start: int, local_attn_frames: int, sink_frames: int, global_sink: bool) -> LongLiveRecache:
    """LongLive v1.0's recache before the block starting at ``frame_start`` (``local_attn_frames`` -1: global).

    The official code re-encodes the last ``min(local_attn_frames, frame_start)`` frames in one call, and:

    - ``frame_start <= local_attn_frames`` (or global attention): writes every one of them from the first
      cache slot, the sink included (``global_sink`` makes no difference);
    - otherwise with ``global_sink``: writes only the frames after the sink's slots, which keeps its old K/V;
      the call's keys are the old sink plus the rewritten frames, so the window's first ``sink_frames``
      frames are computed but neither written nor attended (here they are not computed at all);
    - otherwise without it: empties the cache and writes every frame of the window; its first
      ``sink_frames`` frames are the sink from then on, at their own positions.
    """
    if local_attn_frames == -1 or frame_start <= local_attn_frames:
        return LongLiveRecache(0, keeps_sink=False)
    window_start = frame_start - local_attn_frames
    if global_sink:
        return LongLiveRecache(window_start + sink_frames, keeps_sink=True)
    return LongLiveRecache(window_start, keeps_sink=False)
