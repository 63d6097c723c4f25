"""The block-causal forward against diffusers' own forward, and weight formats against each other."""

from __future__ import annotations

import pytest
import torch
from conftest import REFERENCE_ROOT
from diffusers import WanTransformer3DModel
from reference_case import load_case
from safetensors.torch import save_file

from tokentrim_server.cache.contexts import BlockCausalContext
from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.loading.checkpoints import CheckpointError, load_weights, normalize_keys, read_state_dict
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import tiny_transformer_config

SF_CASE = REFERENCE_ROOT / "self_forcing_global_9f"


def _tiny_model(seed: int = 0) -> CausalWanTransformer:
    torch.manual_seed(seed)
    return CausalWanTransformer(WanTransformer3DModel.from_config(tiny_transformer_config()), text_len=16).eval()


def _one_chunk(model: CausalWanTransformer, latents, timestep, prompt, frame_start: int = 0) -> torch.Tensor:
    cache = KVCache(model.num_layers, model.tokens_per_frame(*latents.shape[-2:]))
    geo = model.geometry(latents, frame_start)
    context = BlockCausalContext(cache, model.rotary(geo, latents.device))
    timesteps = torch.full(latents.shape[:2], timestep)
    with torch.no_grad():
        return model(latents, timesteps, model.encode_text(prompt), context, frame_start)


def test_empty_cache_chunk_equals_diffusers_forward() -> None:
    model = _tiny_model()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 3, 16, 8, 12, generator=generator)
    prompt = torch.randn(1, 10, model.config.text_dim, generator=generator)
    ours = _one_chunk(model, latents, 937.5, prompt)

    padded = torch.zeros(1, model.text_len, model.config.text_dim)
    padded[:, :10] = prompt
    with torch.no_grad():
        reference = model.base(latents.permute(0, 2, 1, 3, 4), torch.tensor([937.5]), padded).sample
    assert (ours - reference.permute(0, 2, 1, 3, 4)).abs().max().item() <= 1e-5


def test_per_frame_timesteps_modulate_each_frame() -> None:
    """A frame's output depends on its own timestep: changing frame 2's leaves frame 0's modulation alone."""
    model = _tiny_model()
    latents = torch.randn(1, 3, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    prompt = torch.randn(1, 4, model.config.text_dim)
    text = model.encode_text(prompt)
    outputs = []
    for last in (500.0, 900.0):
        cache = KVCache(model.num_layers, model.tokens_per_frame(8, 12))
        context = BlockCausalContext(cache, model.rotary(model.geometry(latents, 0), latents.device))
        with torch.no_grad():
            outputs.append(model(latents, torch.tensor([[500.0, 500.0, last]]), text, context, 0))
    assert not torch.allclose(outputs[0][:, 2], outputs[1][:, 2])


def test_rope_uses_the_absolute_frame_index() -> None:
    model = _tiny_model()
    latents = torch.randn(1, 3, 16, 8, 12)
    prompt = torch.randn(1, 4, model.config.text_dim)
    at_zero = _one_chunk(model, latents, 500.0, prompt, frame_start=0)
    at_nine = _one_chunk(model, latents, 500.0, prompt, frame_start=9)
    assert not torch.allclose(at_zero, at_nine)
    # Past the model's 1024-frame table the rows are computed on demand (issue #19: streams have no end);
    # tests/test_long_streams.py checks they are a longer table's rows, bit for bit.
    past_the_table = _one_chunk(model, latents, 500.0, prompt, frame_start=1023)
    assert torch.isfinite(past_the_table).all() and not torch.allclose(past_the_table, at_nine)


@pytest.mark.skipif(not SF_CASE.is_dir(), reason="reference case missing")
def test_original_and_diffusers_keys_give_identical_outputs(tmp_path) -> None:
    case = load_case(SF_CASE)
    original = case.run()
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in case.model.base.state_dict().items()}, str(diffusers_file))
    converted = load_case(SF_CASE)
    load_weights(converted.model.base, normalize_keys(read_state_dict(diffusers_file)))
    assert torch.equal(converted.run(), original)


@pytest.mark.skipif(not SF_CASE.is_dir(), reason="reference case missing")
def test_checkpoint_with_missing_or_unexpected_keys_names_them(tmp_path) -> None:
    state = read_state_dict(SF_CASE / "checkpoint.pt")
    state.pop("model.blocks.1.ffn.2.bias")
    state["model.blocks.9.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save({"generator_ema": state}, broken)
    model = load_case(SF_CASE).model
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.net\.2\.bias.*blocks\.9\.extra\.weight"):
        load_weights(model.base, normalize_keys(read_state_dict(broken)))
    with pytest.raises(CheckpointError, match="generator_ema"):
        read_state_dict(broken, checkpoint_key="ema")
