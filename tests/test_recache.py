"""Prompt switches: the recache modes (``block_causal``, ``longlive``) and what they do to the cache."""

from __future__ import annotations

import pytest
import torch
from longlive_official import official_longlive
from policy_support import LATENT_SHAPE, prompt, rolling_stream, self_forcing_stream, tiny_model
from reference_case import PromptSwitch, run_with_switches

from tokentrim_server.pipelines.base import StreamBase
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.recache import LongLiveRecache, longlive_recache
from tokentrim_server.pipelines.registry import build_pipeline, pipeline_options


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# LongLive's rules with a smaller window (9 frames, sink 3) and two steps: every case in fewer model calls.
SMALL = {"local_attn_frames": 9, "denoising_steps": (1000, 500)}


def longlive_stream(model, blocks: int, **options) -> StreamBase:
    pipeline = build_pipeline("longlive", model, {**SMALL, **options})
    return pipeline.open(prompt(), LATENT_SHAPE, SeededNoise(3), blocks)


def sink_kv(stream: StreamBase) -> list[torch.Tensor]:
    cache = stream.cache
    return [cache.committed(layer, 0, cache.sink_tokens())[0].clone() for layer in range(cache.num_layers)]


# ---------------------------------------------------------------- which frames LongLive writes
@pytest.mark.parametrize(
    "frame_start, local, sink, global_sink, expected",
    [
        (3, 12, 3, True, LongLiveRecache(0, keeps_sink=False)),  # after one block
        (12, 12, 3, True, LongLiveRecache(0, keeps_sink=False)),  # at the window: the sink is rewritten
        (12, 12, 3, False, LongLiveRecache(0, keeps_sink=False)),
        (15, 12, 3, True, LongLiveRecache(6, keeps_sink=True)),  # past it: the old sink stays
        (15, 12, 3, False, LongLiveRecache(3, keeps_sink=False)),  # frames 3..5 become the sink
        (30, -1, 3, True, LongLiveRecache(0, keeps_sink=False)),  # global attention: everything
    ],
)
def test_longlive_recache_window(frame_start, local, sink, global_sink, expected):
    assert longlive_recache(frame_start, local, sink, global_sink) == expected


# ---------------------------------------------------------------- against the official cache arithmetic
OFFICIAL_RUNS = {
    # name: (options, blocks, switches (frame, prompt index))
    "before the window": ({}, 5, [(6, 1)]),
    "at the window, no global sink": ({"global_sink": False}, 5, [(9, 1)]),
    "past the window": ({}, 6, [(12, 1)]),
    "past the window, no global sink": ({"global_sink": False}, 6, [(12, 1)]),
    "two switches": ({}, 7, [(6, 1), (15, 2)]),
    "two switches, no global sink": ({"global_sink": False}, 7, [(12, 1), (18, 2)]),
    "at frame 0, then past the window": ({}, 6, [(0, 1), (12, 2)]),
    "odd window over the sink": ({"frames_per_block": 2, "local_attn_frames": 5, "sink_frames": 2}, 6, [(6, 1)]),
    "odd window, no global sink": (
        {"frames_per_block": 2, "local_attn_frames": 5, "sink_frames": 2, "global_sink": False},
        7,
        [(6, 1), (10, 2)],
    ),
    "global attention": ({"local_attn_frames": -1, "sink_frames": 0}, 4, [(6, 1)]),
}


@pytest.mark.parametrize("options, blocks, switches", OFFICIAL_RUNS.values(), ids=OFFICIAL_RUNS.keys())
def test_longlive_recache_matches_the_official_cache_arithmetic(model, options, blocks, switches):
    texts = [model.encode_text(prompt(seed)) for seed in (1, 98, 99)]
    switches = [PromptSwitch(frame, index) for frame, index in switches]
    ours = run_with_switches(longlive_stream(model, blocks, **options), texts, switches)
    official = official_longlive(
        longlive_stream(model, blocks, **options),
        texts,
        switches,
        pipeline_options("longlive", {**SMALL, **options}).global_sink,
    )
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)


def test_the_official_transcription_notices_a_missing_recache(model):
    """The comparison above can fail: the official loop differs from a switch that only changes the prompt."""
    texts = [model.encode_text(prompt(seed)) for seed in (1, 98)]
    stream = longlive_stream(model, 6)
    chunks = [stream.next_chunk() for _ in range(4)]
    stream.text = texts[1]
    chunks += list(stream)
    official = official_longlive(longlive_stream(model, 6), texts, [PromptSwitch(12, 1)], global_sink=True)
    assert (torch.cat([c.latents for c in chunks], 1) - official).abs().max() > 1e-4


# ---------------------------------------------------------------- what each mode does to the cache
def test_longlive_past_the_window_keeps_the_old_sink(model):
    stream = longlive_stream(model, 6)
    chunks = [stream.next_chunk() for _ in range(4)]
    sink, frames = sink_kv(stream), stream.cache.frames
    stream.recache(model.encode_text(prompt(seed=99)), chunks)
    assert stream.cache.frames == frames == [0, 1, 2, *range(6, 12)]
    for before, after in zip(sink, sink_kv(stream), strict=True):
        assert torch.equal(before, after)


def test_longlive_without_global_sink_moves_the_sink_to_the_window(model):
    stream = longlive_stream(model, 6, global_sink=False)
    chunks = [stream.next_chunk() for _ in range(4)]
    stream.recache(model.encode_text(prompt(seed=99)), chunks)
    assert stream.cache.frames == list(range(3, 12))  # the whole window, evicted frames 3..5 included
    assert stream.cache.sink_start == 3
    stream.next_chunk()
    assert stream.cache.frames == [3, 4, 5, *range(9, 15)]  # frames 3..5 stay as the sink


@pytest.mark.parametrize("global_sink", [True, False])
def test_longlive_at_or_before_the_window_rewrites_the_sink(model, global_sink):
    runs = []
    for blocks_before in (2, 3):  # switches at frames 6 and 9 = local_attn_frames
        stream = longlive_stream(model, 4, global_sink=global_sink)
        chunks = [stream.next_chunk() for _ in range(blocks_before)]
        sink = sink_kv(stream)
        stream.recache(model.encode_text(prompt(seed=99)), chunks)
        assert stream.cache.frames == list(range(3 * blocks_before))
        assert stream.cache.sink_start == 0
        assert all(not torch.equal(before, after) for before, after in zip(sink, sink_kv(stream), strict=True))
        runs.append(torch.cat([c.latents for c in stream], 1))
    other = [longlive_stream(model, 4, global_sink=not global_sink) for _ in range(2)]
    for blocks_before, run, stream in zip((2, 3), runs, other, strict=True):  # global_sink makes no difference here
        chunks = [stream.next_chunk() for _ in range(blocks_before)]
        stream.recache(model.encode_text(prompt(seed=99)), chunks)
        assert torch.equal(torch.cat([c.latents for c in stream], 1), run)


# Only where every cached frame was first written with the context it is re-written with: block-causal rewriting
# then repeats each chunk's own cache-writing call. Under a local window a cached frame was first written while
# frames since evicted were still there, so even block-causally its re-encoding differs slightly.
@pytest.mark.parametrize(
    "make",
    [lambda model: self_forcing_stream(model, 6), lambda model: rolling_stream(model, 6)],
    ids=["self_forcing_global", "rolling_forcing"],
)
def test_block_causal_recache_under_the_same_prompt_changes_nothing(model, make):
    plain = [chunk.latents for chunk in make(model)]
    stream = make(model)
    emitted = [stream.next_chunk() for _ in range(3)]
    stream.recache(stream.text, emitted)
    rest = [chunk.latents for chunk in stream]
    assert len(rest) == 3
    for expected, actual in zip(plain[3:], rest, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_longlive_recache_under_the_same_prompt_is_no_no_op(model):
    """One joint unmasked call: from the second layer on, a re-encoded frame depends on the frames after it."""

    def make() -> StreamBase:  # global attention, where a block-causal recache is exact
        return self_forcing_stream(model, 4, recache="longlive", denoising_steps=(1000, 500))

    plain = torch.cat([chunk.latents for chunk in make()], 1)
    stream = make()
    emitted = [stream.next_chunk() for _ in range(2)]
    stream.recache(stream.text, emitted)
    rest = torch.cat([chunk.latents for chunk in stream], 1)
    assert (rest - plain[:, 6:]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "make",
    [
        lambda model: self_forcing_stream(model, 3, local_attn_frames=7, sink_frames=3),
        lambda model: longlive_stream(model, 3),
        lambda model: rolling_stream(model, 5),
    ],
    ids=["self_forcing_block_causal", "longlive", "rolling_forcing"],
)
def test_recache_under_a_new_prompt_steers_the_next_chunks(model, make):
    plain = [chunk.latents for chunk in make(model)]
    stream = make(model)
    emitted = [stream.next_chunk() for _ in range(2)]
    frames_before = stream.cache.frames
    stream.recache(model.encode_text(prompt(seed=99)), emitted)
    assert stream.cache.frames == frames_before  # the same frames, re-encoded
    rest = [chunk.latents for chunk in stream]
    assert not torch.allclose(rest[0], plain[2])


# ---------------------------------------------------------------- pruned positions
MODES = {
    "block_causal": {"recache": "block_causal"},
    "longlive": {},
    "longlive, no global sink": {"global_sink": False},
}


@pytest.mark.parametrize("options", MODES.values(), ids=MODES.keys())
def test_pruned_positions_come_back_whole(model, options):
    """A recache rebuilds what it writes from the emitted latents: the cache is the one an unpruned session gets."""
    caches = []
    for prune in (False, True):
        stream = longlive_stream(model, 4, **options)
        chunks = [stream.next_chunk() for _ in range(4)]
        if prune:
            assert stream.cache.remove_positions(torch.arange(0, 24, 2)) > 0
        stream.recache(model.encode_text(prompt(seed=99)), chunks)
        assert set(stream.cache.frame_token_counts().values()) == {stream.tokens_per_frame}
        caches.append([stream.cache.committed(layer) for layer in range(stream.cache.num_layers)])
    for (k, v), (pruned_k, pruned_v) in zip(*caches, strict=True):
        assert torch.equal(k, pruned_k) and torch.equal(v, pruned_v)


# ---------------------------------------------------------------- what a session keeps for a switch
@pytest.mark.parametrize(
    "options, kept",
    [
        ({"recache": "block_causal"}, [0, 2, 3]),  # the cached chunks: the sink's and the window's
        ({}, [2, 3]),  # frames 6..11: the window after the sink's slots
        ({"global_sink": False}, [1, 2, 3]),  # frames 3..11: the whole window, evicted frames included
    ],
)
def test_a_session_keeps_the_chunks_its_recache_reads(model, options, kept):
    stream = longlive_stream(model, 4, **options)
    chunks = [stream.next_chunk() for _ in range(4)]
    assert [chunk.index for chunk in chunks if stream.recache_reads(chunk)] == kept


def test_a_recache_without_the_frames_it_reads_is_refused(model):
    stream = longlive_stream(model, 5, global_sink=False)
    chunks = [stream.next_chunk() for _ in range(4)]
    with pytest.raises(ValueError, match=r"frames 3\.\.11"):
        stream.recache(model.encode_text(prompt(seed=99)), chunks[2:])


def test_global_sink_off_needs_the_longlive_recache():
    with pytest.raises(ValueError, match="global_sink applies to recache 'longlive' only"):
        build_pipeline("self_forcing", tiny_model(), {"global_sink": False})
