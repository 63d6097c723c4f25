"""The narrow view of a session's KV cache that a policy gets."""

from __future__ import annotations

import torch

from tokentrim_server.cache.kv_cache import CacheStats, KVCache


class CacheHandle:
    """Sizes of the cache and removal of token positions from its non-sink frames; nothing else.

    A policy never sees keys or values and cannot touch sink frames: removal goes through
    :meth:`KVCache.remove_positions`, which skips them, and physically compacts the buffers so a removed
    token never takes part in attention again.
    """

    def __init__(self, cache: KVCache) -> None:
        self._cache = cache

    @property
    def tokens_per_frame(self) -> int:
        return self._cache.tokens_per_frame

    @property
    def sink_frames(self) -> int:
        return self._cache.sink_frames

    def stats(self) -> CacheStats:
        """Committed frames, tokens and bytes (pending tokens of the chunk being denoised excluded)."""
        return self._cache.stats()

    def context_frames(self) -> list[int]:
        """Absolute indices of the committed frames a removal can touch (every non-sink frame)."""
        return self._cache.context_frames()

    def frame_token_counts(self) -> dict[int, int]:
        return self._cache.frame_token_counts()

    def remove_positions(self, positions: torch.Tensor) -> int:
        """Remove token ``positions`` (indices inside a frame) from every non-sink frame; returns tokens removed.

        Also drops the pending K/V of the chunk being denoised: after a removal the chunk must be recomputed.
        """
        positions = torch.as_tensor(positions).flatten()
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"positions must be an integer tensor; got {positions.dtype}")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.tokens_per_frame):
            raise ValueError(f"positions must lie in [0, {self.tokens_per_frame}); got {positions.tolist()}")
        self._cache.discard_pending()
        return self._cache.remove_positions(positions.long())
