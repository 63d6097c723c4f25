"""Attention contexts: how one model call reads and writes a session's KV cache."""

from __future__ import annotations

from typing import Protocol

import torch

from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.models.rope import apply_rotary

Tables = tuple[torch.Tensor, torch.Tensor]


class PendingWrites(Protocol):
    """What a block-causal call needs of a cache: a :class:`KVCache`, or a read-only ``ScratchView`` of one."""

    def write_pending(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def keys_values(self, layer: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]: ...


class BlockCausalContext:
    """Self Forcing's rule: the chunk writes its roped K/V behind the committed frames and attends to all.

    Eviction (the local window) happens before the block's first call, so every call of the block sees
    the same keys; the final call on the clean chunk leaves its K/V pending for the pipeline to commit.
    """

    def __init__(self, cache: PendingWrites, rope: Tables) -> None:
        self.cache = cache
        self.rope = rope

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache.write_pending(layer, apply_rotary(k, self.rope), v)
        return self.cache.keys_values(layer)


def _with_sink(
    cache: KVCache, layer: int, sink_rope: Tables, rest: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the un-roped sink, rotated to ``sink_rope``'s frames, to ``rest``."""
    sink_k, sink_v = cache.committed(layer, 0, cache.sink_tokens())
    return torch.cat([apply_rotary(sink_k, sink_rope), rest[0]], 1), torch.cat([sink_v, rest[1]], 1)


class RollingWindowContext:
    """Rolling Forcing's denoising call: ``[sink; newest clean frames; window]`` with a re-rotated sink.

    ``recent_start`` is the first cached token shown (``None``: the window attends only to itself, as while
    windows still grow from block 0). Nothing is written: only cache-writing calls store K/V.
    """

    def __init__(
        self, cache: KVCache, rope: Tables, sink_rope: Tables | None = None, recent_start: int | None = None
    ) -> None:
        self.cache = cache
        self.rope = rope
        self.sink_rope = sink_rope
        self.recent_start = recent_start

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = apply_rotary(k, self.rope)
        if self.recent_start is None or self.sink_rope is None:
            return k, v
        recent_k, recent_v = self.cache.committed(layer, self.recent_start)
        return _with_sink(self.cache, layer, self.sink_rope, (torch.cat([recent_k, k], 1), torch.cat([recent_v, v], 1)))


class RollingWriteContext:
    """Rolling Forcing's cache-writing call on one clean block.

    The block's K is stored roped at its own frames, except the sink block, stored un-roped. It attends to
    the last ``attention_frames`` frames of ``[sink, cached blocks..., itself]``: while that span starts at
    frame 0 the sink is in it at its own position (``sink_rope`` = frame 0); otherwise the sink is left out
    and the span starts at ``span_start``.
    """

    def __init__(
        self, cache: KVCache, rope: Tables, stores_sink: bool, sink_rope: Tables | None, span_start: int
    ) -> None:
        self.cache = cache
        self.rope = rope
        self.stores_sink = stores_sink
        self.sink_rope = sink_rope
        self.span_start = span_start

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        roped = apply_rotary(k, self.rope)
        self.cache.write_pending(layer, k if self.stores_sink else roped, v)
        if self.stores_sink:
            return roped, v
        if self.sink_rope is None:
            return self.cache.keys_values(layer, self.span_start)
        return _with_sink(self.cache, layer, self.sink_rope, self.cache.keys_values(layer, self.cache.sink_tokens()))
