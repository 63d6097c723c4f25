"""The official LongLive v1.0 interactive loop on its slot-based KV cache, transcribed for tests.

The pipeline's ``longlive`` recache reasons in frames (what a switch keeps, what it writes); this module
re-derives the same runs from the official cache arithmetic instead: token slots per layer, the global and
local end indices, the roll that keeps the sink, the recompute rule that protects the sink's slots, and
``sink_recache_after_switch``. Tests compare the two at switch points and settings no recorded case covers.
Valid where the official code has no quirk this project does not reproduce: ``sink_frames`` equal to
``frames_per_block`` (or 0).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from reference_case import PromptSwitch

from tokentrim_server.models.causal_wan import TextContext
from tokentrim_server.models.rope import apply_rotary
from tokentrim_server.pipelines.schedule import to_x0
from tokentrim_server.pipelines.self_forcing import SelfForcingStream

GLOBAL_ATTENTION_FRAMES = 21  # the official 32760-token attention cap of global attention, in frames


class OfficialCache:
    """Every layer's K/V slots and the official ``global_end_index`` / ``local_end_index`` (in tokens)."""

    def __init__(self, stream: SelfForcingStream, total_frames: int) -> None:
        options = stream.options
        local = options.local_attn_frames
        self.stream = stream
        self.frame_tokens = stream.tokens_per_frame
        self.local = local
        self.size = (total_frames if local == -1 else local) * self.frame_tokens
        self.max_attention = (GLOBAL_ATTENTION_FRAMES if local == -1 else local) * self.frame_tokens
        self.sink = options.sink_frames * self.frame_tokens
        self.k: list[torch.Tensor | None] = [None] * stream.model.num_layers
        self.v: list[torch.Tensor | None] = [None] * stream.model.num_layers
        self.global_end = self.local_end = 0

    def zero(self) -> None:
        for buffer in (*self.k, *self.v):
            if buffer is not None:
                buffer.zero_()

    def call(
        self, latents: torch.Tensor, timestep: float, frame_start: int, sink_recache: bool = False
    ) -> torch.Tensor:
        """One official model call on ``latents`` from ``frame_start``; returns the flow."""
        context = OfficialContext(self, frame_start, latents.shape[1], sink_recache)
        timesteps = torch.full(latents.shape[:2], timestep, dtype=torch.float32)
        flow = self.stream.call(latents, timesteps, frame_start, context)
        if not context.recompute:  # the official code never moves the pointers back during a recompute
            self.global_end, self.local_end = context.current_end, context.local_end
        return flow


class OfficialContext:
    """One call's slot arithmetic, as in the official ``CausalWanSelfAttention.forward``."""

    def __init__(self, cache: OfficialCache, frame_start: int, num_frames: int, sink_recache: bool) -> None:
        self.cache = cache
        self.rope = cache.stream.rotary(frame_start, num_frames)
        start = frame_start * cache.frame_tokens
        new = num_frames * cache.frame_tokens
        self.current_end = start + new
        self.recompute = self.current_end <= cache.global_end and start > 0
        self.roll = cache.local != -1 and self.current_end > cache.global_end and new + cache.local_end > cache.size
        self.evicted = new + cache.local_end - cache.size if self.roll else 0
        self.rolled = cache.local_end - self.evicted - cache.sink
        self.local_end = cache.local_end + self.current_end - cache.global_end - self.evicted
        self.local_start = self.local_end - new
        self.write_start = max(self.local_start, cache.sink) if self.recompute else self.local_start
        if sink_recache and not self.roll:
            self.write_start = self.local_start

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.cache
        if cache.k[layer] is None:
            cache.k[layer] = k.new_zeros((k.shape[0], cache.size, *k.shape[2:]))
            cache.v[layer] = v.new_zeros((v.shape[0], cache.size, *v.shape[2:]))
        slots_k, slots_v = cache.k[layer], cache.v[layer]
        sink, offset = cache.sink, self.write_start - self.local_start
        for slots, new in ((slots_k, apply_rotary(k, self.rope)), (slots_v, v)):
            if self.roll:
                kept = slots[:, sink + self.evicted : sink + self.evicted + self.rolled].clone()
                slots[:, sink : sink + self.rolled] = kept
            slots[:, self.write_start : self.local_end] = new[:, offset:]
        if sink > 0:
            local_from = max(sink, self.local_end - (cache.max_attention - sink))
            keys = torch.cat([slots_k[:, :sink], slots_k[:, local_from : self.local_end]], 1)
            return keys, torch.cat([slots_v[:, :sink], slots_v[:, local_from : self.local_end]], 1)
        window_start = max(0, self.local_end - cache.max_attention)
        return slots_k[:, window_start : self.local_end], slots_v[:, window_start : self.local_end]


def official_longlive(
    stream: SelfForcingStream, texts: Sequence[TextContext], switches: Sequence[PromptSwitch], global_sink: bool
) -> torch.Tensor:
    """The official ``inference`` loop over ``stream``'s blocks (its noise, schedule and model; not its cache).

    ``switches`` are sorted by frame; ``texts[0]`` is used from frame 0. Returns the latents.
    """
    fpb, local = stream.frames_per_block, stream.options.local_attn_frames
    cache = OfficialCache(stream, stream.num_blocks * fpb)
    pending = deque(switches)
    output: list[torch.Tensor] = []
    stream.text = texts[0]
    for block in range(stream.num_blocks):
        start = block * fpb
        if pending and start >= pending[0].frame:
            stream.text = texts[pending.popleft().prompt_index]
            if not global_sink:
                cache.zero()
            count = start if local == -1 else min(local, start)
            if count:
                window = torch.cat(output, 1)[:, start - count : start]
                cache.call(window, stream.options.context_noise, start - count, sink_recache=not global_sink)
        noisy = stream.initial_noise(block)
        for step, timestep in enumerate(stream.timesteps):
            x0 = to_x0(noisy, cache.call(noisy, timestep, start), timestep)
            if step + 1 < len(stream.timesteps):
                noisy = stream.renoise(block, step + 1, x0, stream.timesteps[step + 1])
        cache.call(x0, stream.options.context_noise, start)
        output.append(x0)
    return torch.cat(output, 1)
