"""How much KV cache a session can ever hold: what admission control reserves for it.

The bound follows from the pipeline's cache rules, not from measurement, so it is known before the
session's first model call:

* Self Forcing, local attention: ``local_attn_frames`` (the committed window plus the block being written).
* Self Forcing, global attention: every frame of the session (only bounded sessions may use it).
* Rolling Forcing: ``cache_frames`` (the write evicts down to ``cache_frames - frames_per_block`` first).
"""

from __future__ import annotations

from typing import Any

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.rolling_forcing import RollingForcingOptions
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions


def cached_frames_bound(options: Any, chunks: int | None) -> int:
    """Most latent frames the session's cache holds at once (``chunks=None``: unbounded session)."""
    if isinstance(options, RollingForcingOptions):
        window = options.cache_frames
    elif isinstance(options, SelfForcingOptions):
        if not options.unbounded and chunks is None:
            raise ValueError("an unbounded Self Forcing session needs local attention")
        window = options.local_attn_frames if options.unbounded else None
    else:
        raise TypeError(f"no cache bound for {type(options).__name__}")
    # A session never caches more frames than it generates.
    session = None if chunks is None else chunks * options.frames_per_block
    return min(bound for bound in (window, session) if bound is not None)


def session_cache_bytes(
    model: CausalWanTransformer, options: Any, latent_shape: tuple[int, int, int], chunks: int | None
) -> int:
    """Bytes of K and V over all layers the session's cache can reach."""
    tokens = cached_frames_bound(options, chunks) * model.tokens_per_frame(latent_shape[1], latent_shape[2])
    return tokens * model.kv_bytes_per_token()
