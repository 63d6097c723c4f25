"""The tiny model: seeded, download-free, and round-trips through a diffusers-format folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import AutoTokenizer, UMT5EncoderModel

from tokentrim_server.loading.model_folder import save_tiny_model_folder
from tokentrim_server.models.tiny import TinyComponents, build_tiny_components, tiny_transformer_config

COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")


@pytest.fixture(scope="module")
def tiny() -> TinyComponents:
    return build_tiny_components(seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "Wan2.1-T2V-tiny", seed=0)


def _transformer_output(transformer: WanTransformer3DModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 16, 2, 4, 4, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        return transformer(hidden, torch.tensor([500]), context, return_dict=False)[0]


def _vae_output(vae: AutoencoderKLWan) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(4))).sample


def _text_output(text_encoder: UMT5EncoderModel) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(input_ids=torch.tensor([[5, 9, 12, 1]])).last_hidden_state


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transformer_config_is_tiny_wan(tiny: TinyComponents) -> None:
    config = tiny_transformer_config()
    assert config["num_attention_heads"] * config["attention_head_dim"] == 128
    assert tiny.transformer.config.text_dim == tiny.text_encoder.config.d_model == 32
    assert tiny.transformer.config.in_channels == tiny.vae.config.z_dim == 16
    assert tiny.text_len == 16


def test_seeded_and_leaves_global_rng_alone(tiny: TinyComponents) -> None:
    state = torch.random.get_rng_state()
    again, other = build_tiny_components(seed=0), build_tiny_components(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("transformer", "vae", "text_encoder"):
        assert _state_dicts_equal(getattr(tiny, name), getattr(again, name))
        assert not _state_dicts_equal(getattr(tiny, name), getattr(other, name))


def test_vae_keeps_wan_compression(tiny: TinyComponents) -> None:
    frames = _vae_output(tiny.vae)
    assert frames.shape == (1, 3, 5, 16, 16)  # 1 + 4 * (2 - 1) frames, 8x spatial


def test_tokenizer_is_t5_like(tiny: TinyComponents) -> None:
    tokens = tiny.tokenizer("A Cat runs zzz", max_length=8, truncation=True, padding="max_length")
    vocab = tiny.tokenizer.get_vocab()
    assert tokens.input_ids == [vocab["a"], vocab["cat"], vocab["runs"], vocab["<unk>"], 1, 0, 0, 0]
    assert tokens.attention_mask == [1, 1, 1, 1, 1, 0, 0, 0]
    assert tiny.tokenizer.pad_token_id == 0 and tiny.tokenizer.eos_token_id == 1


def test_folder_layout_and_size(folder: Path) -> None:
    assert all((folder / name).is_dir() for name in COMPONENTS)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert set(COMPONENTS) <= index.keys()
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert total < 5 * 2**20


def test_folder_reloads_offline_with_identical_outputs(tiny: TinyComponents, folder: Path) -> None:
    transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", local_files_only=True)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", local_files_only=True)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler", local_files_only=True)

    torch.testing.assert_close(_transformer_output(transformer), _transformer_output(tiny.transformer))
    torch.testing.assert_close(_vae_output(vae), _vae_output(tiny.vae))
    torch.testing.assert_close(_text_output(text_encoder), _text_output(tiny.text_encoder))
    prompt = "A golden sunset over the ocean, cinematic."
    assert tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids
    assert scheduler.config.shift == 5.0


def test_folder_loads_as_a_wan_pipeline(folder: Path) -> None:
    pipeline = WanPipeline.from_pretrained(folder, local_files_only=True)
    assert isinstance(pipeline.transformer, WanTransformer3DModel)
    assert isinstance(pipeline.vae, AutoencoderKLWan)
