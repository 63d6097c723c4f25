"""How much KV cache a session can ever hold: what admission control reserves for it.

The bound follows from the pipeline's cache rules (its options' ``cached_frames_bound``), not from
measurement, so it is known before the session's first model call; the session's cache allocates exactly
that, once.
"""

from __future__ import annotations

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.options import PipelineOptions


def session_cache_bytes(
    model: CausalWanTransformer, options: PipelineOptions, latent_shape: tuple[int, int, int], chunks: int | None
) -> int:
    """Bytes of K and V over all layers the session's cache can reach (``chunks=None``: unbounded session)."""
    tokens = options.cached_frames_bound(chunks) * model.tokens_per_frame(latent_shape[1], latent_shape[2])
    return tokens * model.kv_bytes_per_token()
