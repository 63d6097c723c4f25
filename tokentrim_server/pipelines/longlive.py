"""LongLive (NVlabs/LongLive v1.0): Self Forcing with a local window, an attention sink and LongLive's recache.

LongLive's inference before a prompt switch is Self Forcing's (the same stream: block-causal denoising, a
clean cache-writing call per block, a local window that includes the block being denoised, sink frames kept
for ever); what it adds is its recache after a switch. So this spec is the Self Forcing stream with the
official interactive configuration (``configs/longlive_interactive_inference.yaml``) as its defaults: a
LongLive checkpoint served with the default options reproduces the official video, switches included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tokentrim_server.pipelines.options import GlobalSink, LocalAttentionFrames, Recache, SinkFrames
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions, SelfForcingPipeline


@dataclass(frozen=True)
class LongLiveOptions(SelfForcingOptions):
    """Self Forcing's options with LongLive's interactive defaults (window 12 frames, sink 3, global sink)."""

    local_attn_frames: LocalAttentionFrames = 12
    sink_frames: SinkFrames = 3
    recache: Recache = "longlive"
    global_sink: GlobalSink = True


class LongLivePipeline(SelfForcingPipeline):
    name = "longlive"
    options_class = LongLiveOptions
    serving_defaults: ClassVar[dict[str, Any]] = {}  # the official window already streams without end
