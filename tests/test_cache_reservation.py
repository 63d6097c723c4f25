"""A session's KV cache allocates what admission reserved for it, once, and never more (issue #17)."""

from __future__ import annotations

import pytest

from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.engine.sizing import session_cache_bytes
from tokentrim_server.pipelines.registry import pipeline_options
from tokentrim_server.policies import create_policy

SIZE = 32

CASES = {
    # Self Forcing's local window (21 frames): the doubling buffers of before allocated 24.
    "self_forcing window": ("self_forcing", {"local_attn_frames": 21}, None, 9),
    "self_forcing window and sink": ("self_forcing", {"local_attn_frames": 12, "sink_frames": 3}, None, 6),
    "self_forcing global, bounded": ("self_forcing", {}, 5, 5),
    "rolling_forcing": ("rolling_forcing", {}, None, 10),
    # The prompt switch (step 5, frame 15) re-encodes LongLive's whole 12-frame window, evicted frames included.
    "longlive": ("longlive", {}, None, 10),
    "longlive without a global sink": ("longlive", {"global_sink": False}, None, 10),
}


@pytest.mark.parametrize("pipeline, overrides, chunks, steps", CASES.values(), ids=CASES.keys())
def test_allocated_kv_bytes_never_exceed_the_reservation(tiny_bundle, pipeline, overrides, chunks, steps):
    options = pipeline_options(pipeline, overrides)
    reserved = session_cache_bytes(tiny_bundle.transformer, options, tiny_bundle.latent_shape(SIZE, SIZE), chunks)
    # A policy that prunes and regenerates now and then, and a prompt switch that rewrites the cache.
    policy = create_policy("tokentrim", {"sensitivity": 0.0, "warmup": 1, "candidate": "final"})
    plan = SessionPlan(prompt="a red ball", seed=3, pipeline=pipeline, options=options, chunks=chunks, height=SIZE,
                       width=SIZE, policy=policy, decode=False)
    session = GenerationSession(tiny_bundle, plan)
    allocated, regenerations = [], 0
    for index in range(steps):
        if index == steps // 2:
            session.request_prompt_change("a blue square")
        step = session.step()
        allocated.append(session.runner.stream.cache.stats().allocated_bytes)
        assert step.cache_bytes == allocated[-1]
        regenerations += step.result.report.regenerations
    session.close()
    assert regenerations > 0  # the pruning and rewind paths ran too
    assert max(allocated) <= reserved
    assert set(allocated) == {reserved}  # allocated at the reserved size on the first write, once
