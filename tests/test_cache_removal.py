"""Token removal is physical: removed tokens leave the buffers, the attention and the byte counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.policies import CacheHandle

LAYERS, HEADS, HEAD_DIM, TOKENS, FRAMES, SINK = 2, 2, 8, 6, 4, 1


def _filled_cache() -> tuple[KVCache, list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    cache = KVCache(LAYERS, TOKENS, sink_frames=SINK)
    shape = (1, FRAMES * TOKENS, HEADS, HEAD_DIM)
    full = [(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)) for _ in range(LAYERS)]
    for frame in range(FRAMES):
        for layer, (k, v) in enumerate(full):
            span = slice(frame * TOKENS, (frame + 1) * TOKENS)
            cache.write_pending(layer, k[:, span], v[:, span])
        cache.commit(frame, 1)
    return cache, full


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)


def test_removed_tokens_leave_attention_and_sizes() -> None:
    cache, full = _filled_cache()
    handle = CacheHandle(cache)
    before = handle.stats()
    removed_positions = torch.tensor([1, 4])

    removed = handle.remove_positions(removed_positions)

    non_sink = FRAMES - SINK
    assert removed == 2 * non_sink
    after = handle.stats()
    assert after.tokens == before.tokens - removed
    assert after.bytes == before.bytes * after.tokens // before.tokens < before.bytes
    # The same tokens kept everywhere a cache built without them would keep them.
    frame_of = torch.arange(FRAMES).repeat_interleave(TOKENS)
    position_of = torch.arange(TOKENS).repeat(FRAMES)
    keep = ~torch.isin(position_of, removed_positions) | (frame_of < SINK)
    assert cache.positions_of(0).tolist() == list(range(TOKENS))  # the sink frame is whole
    for frame in range(SINK, FRAMES):
        assert cache.positions_of(frame).tolist() == [0, 2, 3, 5]
    q = torch.randn(1, 5, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    for layer, (k, v) in enumerate(full):
        cached_k, cached_v = cache.keys_values(layer)
        assert torch.equal(cached_k, k[:, keep]) and torch.equal(cached_v, v[:, keep])
        pruned = _attend(q, cached_k, cached_v)
        rebuilt = _attend(q, k[:, keep], v[:, keep])
        # ... and equal to attending over the full cache with the removed tokens masked out.
        masked = _attend(q, k, v, torch.where(keep, 0.0, -torch.inf).view(1, 1, 1, -1))
        assert torch.equal(pruned, rebuilt)
        torch.testing.assert_close(pruned, masked)


def test_removal_accumulates_and_never_touches_the_sink() -> None:
    cache, full = _filled_cache()
    handle = CacheHandle(cache)
    handle.remove_positions(torch.tensor([0]))
    handle.remove_positions(torch.tensor([0, 5]))  # 0 is already gone from non-sink frames
    assert handle.stats().tokens == TOKENS + (FRAMES - SINK) * (TOKENS - 2)
    sink_k, sink_v = cache.committed(0, 0, cache.sink_tokens())
    assert torch.equal(sink_k, full[0][0][:, :TOKENS]) and torch.equal(sink_v, full[0][1][:, :TOKENS])
    assert handle.context_frames() == list(range(SINK, FRAMES))


def test_handle_rejects_bad_positions() -> None:
    handle = CacheHandle(_filled_cache()[0])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        handle.remove_positions(torch.tensor([6]))
    with pytest.raises(TypeError, match="integer"):
        handle.remove_positions(torch.tensor([0.5]))
