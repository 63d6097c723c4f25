"""KV cache semantics: local windows with sinks, eviction, token removal."""

from __future__ import annotations

import torch

from tokentrim_server.cache.kv_cache import KVCache

TPF = 4  # tokens per frame


def _commit_frames(cache: KVCache, frame_start: int, num_frames: int) -> None:
    n = num_frames * TPF
    for layer in range(cache.num_layers):
        k = torch.arange(frame_start * TPF, frame_start * TPF + n, dtype=torch.float32).view(1, n, 1, 1)
        cache.write_pending(layer, k.expand(1, n, 2, 3), -k.expand(1, n, 2, 3))
    cache.commit(frame_start, num_frames)


def test_local_window_keeps_sink_and_newest_frames() -> None:
    cache = KVCache(num_layers=2, tokens_per_frame=TPF, sink_frames=1)
    for block in range(5):
        cache.evict_to(7 - 3)  # local_attn_frames 7 including the 3-frame block being denoised
        _commit_frames(cache, block * 3, 3)
    assert cache.frames == [0, 9, 10, 11, 12, 13, 14]  # sink + the 6 newest: 7 frames
    cache.evict_to(4)
    assert cache.frames == [0, 12, 13, 14]
    keys, values = cache.committed(0)
    assert keys[0, :TPF, 0, 0].tolist() == [0, 1, 2, 3]  # the sink's tokens, untouched
    assert torch.equal(values, -keys)


def test_remove_positions_skips_sink_frames_and_shrinks_the_cache() -> None:
    cache = KVCache(num_layers=2, tokens_per_frame=TPF, sink_frames=3)
    _commit_frames(cache, 0, 3)
    _commit_frames(cache, 3, 3)
    before = cache.stats()
    removed = cache.remove_positions(torch.tensor([1, 3]))
    after = cache.stats()
    assert removed == 3 * 2
    assert after.tokens == before.tokens - removed
    assert after.bytes < before.bytes
    counts = cache.frame_token_counts()
    assert [counts[f] for f in range(3)] == [TPF] * 3
    assert [counts[f] for f in range(3, 6)] == [TPF - 2] * 3
    assert cache.positions_of(4).tolist() == [0, 2]
    keys, _ = cache.committed(1)
    # frame 4's surviving tokens are its positions 0 and 2 (token ids 16 and 18)
    assert 16.0 in keys[0, :, 0, 0].tolist() and 17.0 not in keys[0, :, 0, 0].tolist()


def test_drop_from_and_clear_free_everything() -> None:
    cache = KVCache(num_layers=1, tokens_per_frame=TPF)
    _commit_frames(cache, 0, 3)
    _commit_frames(cache, 3, 3)
    cache.drop_from(3)
    assert cache.frames == [0, 1, 2]
    cache.clear()
    assert cache.stats().allocated_bytes == 0 and cache.length == 0
