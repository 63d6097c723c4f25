"""A read-only view of a session's cache for differentiable model calls (session hooks).

It offers what :class:`~tokentrim_server.cache.contexts.BlockCausalContext` uses of a :class:`KVCache`
(``write_pending`` and ``keys_values``): committed K/V are read from the cache, the call's own K/V are kept
aside and never reach the cache's buffers (an in-place write of a tensor with autograd history would attach
the buffers to the graph), and each layer's are dropped once read, so gradient checkpointing does not keep
them alive until backward.
"""

from __future__ import annotations

import torch

from tokentrim_server.cache.kv_cache import KVCache


class ScratchView:
    """The cache as one differentiable call sees it; use a fresh view per call."""

    def __init__(self, cache: KVCache) -> None:
        self._cache = cache
        self._own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def write_pending(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._own[layer] = (k, v)

    def keys_values(self, layer: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._own.pop(layer)
        if self._cache.length <= start:  # nothing committed to show (a new session has no buffers yet)
            return k, v
        committed_k, committed_v = self._cache.committed(layer, start)
        return torch.cat([committed_k, k], 1), torch.cat([committed_v, v], 1)
