"""Prompt switches: re-encoding the cached frames (LongLive's recache) through each pipeline's own writes."""

from __future__ import annotations

import pytest
import torch
from policy_support import prompt, rolling_stream, self_forcing_stream, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# Only where every cached frame was first written with the context it is re-written with. Under a local window
# a cached frame was first written while frames since evicted were still there, so its re-encoding differs
# slightly (as LongLive's recache of its window does).
@pytest.mark.parametrize("make", [lambda model: self_forcing_stream(model, 6), lambda model: rolling_stream(model, 6)],
                         ids=["self_forcing_global", "rolling_forcing"])
def test_recache_under_the_same_prompt_changes_nothing(model, make):
    plain = [chunk.latents for chunk in make(model)]
    stream = make(model)
    emitted = [stream.next_chunk() for _ in range(3)]
    stream.recache(stream.text, emitted)
    rest = [chunk.latents for chunk in stream]
    assert len(rest) == 3
    for expected, actual in zip(plain[3:], rest, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda model: self_forcing_stream(model, 5, local_attn_frames=7, sink_frames=3),
    lambda model: rolling_stream(model, 5),
], ids=["self_forcing_local_sink", "rolling_forcing"])
def test_recache_under_a_new_prompt_steers_the_next_chunks(model, make):
    plain = [chunk.latents for chunk in make(model)]
    stream = make(model)
    emitted = [stream.next_chunk() for _ in range(2)]
    frames_before = stream.cache.frames
    stream.recache(model.encode_text(prompt(seed=99)), emitted)
    assert stream.cache.frames == frames_before  # the same frames, re-encoded
    rest = [chunk.latents for chunk in stream]
    assert not torch.allclose(rest[0], plain[2])
