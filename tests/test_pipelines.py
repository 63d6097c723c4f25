"""Streaming behaviour of the pipelines on a tiny random model."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import WanTransformer3DModel

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import tiny_transformer_config
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline, pipeline_options
from tokentrim_server.pipelines.schedule import denoising_timesteps

LATENT = (16, 4, 4)  # 4 tokens per frame: long streams stay cheap


def _record_key_lengths(stream) -> list[int]:
    """Wrap every model call's attention context to record how many keys each layer attends to."""
    lengths: list[int] = []
    original_call = stream.call

    def spy(latents, timesteps, frame_start, context):
        keys_values = context.keys_values

        def record(layer, k, v):
            keys, values = keys_values(layer, k, v)
            lengths.append(keys.shape[1])
            return keys, values

        context.keys_values = record
        return original_call(latents, timesteps, frame_start, context)

    stream.call = spy
    return lengths


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    torch.manual_seed(0)
    return CausalWanTransformer(WanTransformer3DModel.from_config(tiny_transformer_config()), text_len=16).eval()


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))


def test_warped_timesteps_match_the_official_grid() -> None:
    assert denoising_timesteps([1000, 750, 500, 250], 5.0) == pytest.approx([1000, 937.5, 833.3333, 625.0])
    assert denoising_timesteps([1000, 800, 600, 400, 200], 5.0) == pytest.approx(
        [1000, 952.381, 882.353, 769.231, 555.556], abs=1e-3
    )
    with pytest.raises(ValueError, match="denoising_steps"):
        denoising_timesteps([500, 750], 5.0)


def test_seeded_noise_is_keyed_not_ordered() -> None:
    noise = SeededNoise(7)
    args = ((1, 3, 16, 4, 4), torch.device("cpu"), torch.float32)
    late_first = noise.renoise(2, 1, *args)
    assert torch.equal(noise.initial(0, *args), SeededNoise(7).initial(0, *args))
    assert torch.equal(late_first, SeededNoise(7).renoise(2, 1, *args))
    assert not torch.equal(noise.initial(0, *args), noise.initial(1, *args))
    assert not torch.equal(noise.initial(0, *args), SeededNoise(8).initial(0, *args))


@pytest.mark.parametrize("name", ["self_forcing", "rolling_forcing"])
def test_same_seed_same_video(model, prompt, name) -> None:
    overrides = {"local_attn_frames": 9, "sink_frames": 3} if name == "self_forcing" else {}
    runs = []
    for _ in range(2):
        stream = build_pipeline(name, model, overrides).open(prompt, LATENT, SeededNoise(11), num_blocks=3)
        runs.append(torch.cat([c.latents for c in stream], 1))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (1, 9, *LATENT)


def test_self_forcing_local_window_streams_unbounded_with_its_sink(model, prompt) -> None:
    pipeline = build_pipeline("self_forcing", model, {"local_attn_frames": 9, "sink_frames": 3})
    stream = pipeline.open(prompt, LATENT, SeededNoise(1), num_blocks=None)
    seen_key_lengths = _record_key_lengths(stream)
    sink_keys = None
    for chunk in itertools.islice(stream, 6):
        if chunk.index == 0:
            sink_keys = stream.cache.committed(0, 0, stream.cache.sink_tokens())[0].clone()
        assert stream.cache.frames[:3] == [0, 1, 2]
        assert len(stream.cache.frames) <= 9  # the window, the block just committed included
    assert torch.equal(stream.cache.committed(0, 0, stream.cache.sink_tokens())[0], sink_keys)
    assert max(seen_key_lengths) == 9 * stream.tokens_per_frame
    stream.close()
    assert stream.cache.stats().allocated_bytes == 0


def test_rolling_forcing_keeps_its_sink_and_bounds_attention(model, prompt) -> None:
    options = pipeline_options("rolling_forcing")
    stream = build_pipeline("rolling_forcing", model).open(prompt, LATENT, SeededNoise(5), num_blocks=12)
    seen_key_lengths = _record_key_lengths(stream)
    sink_keys = None
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.index == 0:  # block 0 is final: its last cache write made it the sink
            sink_keys = [stream.cache.committed(layer, 0, 3 * stream.tokens_per_frame) for layer in range(2)]
        assert len(stream.cache.frames) <= options.cache_frames
        assert stream.cache.frames[:3] == [0, 1, 2]
    assert [c.index for c in chunks] == list(range(12))
    assert options.cache_frames < 12 * 3  # the stream really outgrew the cache
    for layer in range(2):
        keys, values = stream.cache.committed(layer, 0, 3 * stream.tokens_per_frame)
        assert torch.equal(keys, sink_keys[layer][0]) and torch.equal(values, sink_keys[layer][1])
    assert max(seen_key_lengths) <= options.attention_frames * stream.tokens_per_frame


def test_bad_options_name_the_field(model, prompt) -> None:
    with pytest.raises(ValueError, match="local_attn_frames"):
        build_pipeline("self_forcing", model, {"local_attn_frames": 2})
    with pytest.raises(ValueError, match="attention_frames"):
        build_pipeline("rolling_forcing", model, {"attention_frames": 10})
    with pytest.raises(ValueError, match="unknown self_forcing option"):
        build_pipeline("self_forcing", model, {"window": 3})
    with pytest.raises(ValueError, match="pipeline must be one of"):
        build_pipeline("causvid", model)
    with pytest.raises(ValueError, match="latent_shape"):
        build_pipeline("self_forcing", model).open(prompt, (16, 5, 4), SeededNoise(0), 1)
    with pytest.raises(ValueError, match="unbounded stream needs local attention"):
        build_pipeline("self_forcing", model).open(prompt, LATENT, SeededNoise(0), None)
