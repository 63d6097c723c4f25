"""Streams without a position limit: past the model's rotary table (1024 latent frames) with flat memory and time."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import WanTransformer3DModel

from tokentrim_server.models.causal_wan import ROTARY_CACHE_SIZE, CausalWanTransformer
from tokentrim_server.models.rope import FrameRope
from tokentrim_server.models.tiny import TINY_TEXT_DIM, TINY_TEXT_LEN, tiny_transformer_config
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline

TABLE_FRAMES = 1024  # Wan 2.1's rotary table
LATENT_SHAPE = (16, 2, 2)  # one token per latent frame: long runs stay fast
# Large blocks and one denoising step: ~1100 latent frames in about 140 chunks.
OPTIONS = {
    "self_forcing": {"frames_per_block": 8, "denoising_steps": [1000], "local_attn_frames": 17},
    "rolling_forcing": {"frames_per_block": 8, "denoising_steps": [1000], "attention_frames": 16, "cache_frames": 16},
}


def model(table_frames: int = TABLE_FRAMES) -> CausalWanTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = WanTransformer3DModel.from_config({**tiny_transformer_config(), "rope_max_seq_len": table_frames})
    return CausalWanTransformer(base.eval(), TINY_TEXT_LEN)


def prompt() -> torch.Tensor:
    return torch.randn(1, 8, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("frame_start", [0, 1000, 1022, 1024, 5000, 100_000])
def test_rotary_rows_past_the_table_are_a_longer_tables_rows(frame_start):
    short, long = FrameRope(model(1024).base.rope), FrameRope(model(1024 * 128).base.rope)
    for ours, theirs in zip(short.tables(frame_start, 3, 2, 2, torch.device("cpu")),
                            long.tables(frame_start, 3, 2, 2, torch.device("cpu")), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("pipeline", sorted(OPTIONS))
def test_a_stream_past_the_table_is_the_run_of_a_longer_table(pipeline):
    """Bit-identical chunks across the table's end against a model whose table covers the whole run (a 96-frame
    table, so that the run crosses it in a few chunks; the mechanism is the same at 1024)."""
    short_table = 96
    chunks = 2 + (short_table + 40) // OPTIONS[pipeline]["frames_per_block"]
    runs = []
    for table in (short_table, TABLE_FRAMES):
        stream = build_pipeline(pipeline, model(table), OPTIONS[pipeline]).open(
            prompt(), LATENT_SHAPE, SeededNoise(7), num_blocks=chunks
        )
        runs.append(torch.cat([chunk.latents for chunk in stream], dim=1))
        stream.close()
    assert runs[0].shape[1] > short_table + 32
    assert torch.equal(runs[0], runs[1])


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", sorted(OPTIONS))
def test_a_long_stream_has_flat_memory_and_time(pipeline):
    fpb = OPTIONS[pipeline]["frames_per_block"]
    transformer = model()
    stream = build_pipeline(pipeline, transformer, OPTIONS[pipeline]).open(prompt(), LATENT_SHAPE, SeededNoise(3))
    seconds, allocated = [], []
    while stream.emitted * fpb < 2 * TABLE_FRAMES:  # twice past the table
        started = time.perf_counter()
        stream.next_chunk()
        seconds.append(time.perf_counter() - started)
        allocated.append(stream.cache.stats().allocated_bytes)
    stream.close()
    warm = len(seconds) // 8  # once the window is full
    assert len(set(allocated[warm:])) == 1  # the cache never grows
    assert len(transformer._rotary_cache) <= ROTARY_CACHE_SIZE  # nor the rotary tables
    # The fastest chunk of a window: what the work costs, without the shared machine's pauses; any growth (a
    # cache or table that grows with the position) would raise it too.
    early, late = min(seconds[warm : 2 * warm]), min(seconds[-warm:])
    assert late < 2.5 * early, (early, late)
