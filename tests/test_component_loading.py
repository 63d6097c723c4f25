"""Loading the VAE and text encoder from diffusers folders and from original Wan files."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tokentrim_server.loading.components import load_text_encoder, load_vae
from tokentrim_server.loading.model_folder import save_tiny_model_folder
from tokentrim_server.loading.wan_t5 import umt5_xxl_config, wan_t5_key_map
from tokentrim_server.models.tiny import TinyComponents, build_tiny_components, tiny_vae_config

PROMPT = "a white horse runs on the beach at sunset"

# diffusers residual-block part -> original Wan VAE part (``residual`` is an nn.Sequential there).
_VAE_RESNET_PARTS = {
    "norm1.": "residual.0.",
    "conv1.": "residual.2.",
    "norm2.": "residual.3.",
    "conv2.": "residual.6.",
    "conv_shortcut.": "shortcut.",
}
# (pattern on a diffusers key, function giving the original key's prefix) for everything but resnet parts.
_VAE_PREFIXES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"quant_conv\.", lambda m: "conv1."),
    (r"post_quant_conv\.", lambda m: "conv2."),
    (r"(encoder|decoder)\.conv_in\.", lambda m: f"{m[1]}.conv1."),
    (r"(encoder|decoder)\.norm_out\.", lambda m: f"{m[1]}.head.0."),
    (r"(encoder|decoder)\.conv_out\.", lambda m: f"{m[1]}.head.2."),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.middle.1."),
    (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.middle.{2 * int(m[2])}."),
    (r"encoder\.down_blocks\.(\d+)\.", lambda m: f"encoder.downsamples.{m[1]}."),
    (
        r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
        lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.",
    ),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.upsamples.{4 * int(m[1]) + 3}."),
]


def _original_vae_key(key: str) -> str:
    """Invert diffusers' ``convert_wan_vae_to_diffusers`` (Wan 2.1 layout: 3 resnets, 1 resample a block)."""
    for pattern, prefix in _VAE_PREFIXES:
        match = re.match(pattern, key)
        if match:
            rest = key[match.end() :]
            for part, original in _VAE_RESNET_PARTS.items():
                if rest.startswith(part):
                    rest = original + rest[len(part) :]
                    break
            return prefix(match) + rest
    raise KeyError(key)


def _original_t5_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Write a UMT5 encoder in the original Wan T5 naming, by inverting the loader's own key map."""
    to_original = {hf: original for original, hf in wan_t5_key_map(text_encoder.config.num_layers).items()}
    state = text_encoder.state_dict()
    original = {to_original[key]: value for key, value in state.items() if key in to_original}
    original["token_embedding.weight"] = state["shared.weight"]
    assert len(original) == len(state) - 1  # everything but the tied duplicate of the embedding
    return original


@pytest.fixture(scope="module")
def tiny() -> TinyComponents:
    return build_tiny_components(seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("subfolder", ["vae", ""])
def test_vae_from_diffusers_folder(tiny: TinyComponents, folder: Path, subfolder: str) -> None:
    _same_weights(load_vae(folder / subfolder), tiny.vae)


def test_vae_from_original_file(tiny: TinyComponents, tmp_path: Path) -> None:
    original = {_original_vae_key(key): value for key, value in tiny.vae.state_dict().items()}
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    vae = load_vae(tmp_path / "Wan2.1_VAE.pth", config=tiny_vae_config())
    _same_weights(vae, tiny.vae)
    latents = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(latents).sample, tiny.vae.decode(latents).sample)


def test_vae_file_with_wrong_keys_is_rejected(tiny: TinyComponents, tmp_path: Path) -> None:
    original = {_original_vae_key(key): value for key, value in tiny.vae.state_dict().items()}
    del original["decoder.head.2.weight"]
    original["decoder.extra.weight"] = torch.zeros(1)
    torch.save(original, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.weight.*decoder\.extra\.weight"):
        load_vae(tmp_path / "vae.pth", config=tiny_vae_config())


def test_missing_paths_fail_before_any_lookup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        load_text_encoder(tmp_path / "absent", tmp_path)


@pytest.mark.parametrize("root", [True, False])
def test_text_encoder_from_diffusers_folders(tiny: TinyComponents, folder: Path, root: bool) -> None:
    if root:
        encoder = load_text_encoder(folder, folder, text_len=tiny.text_len)
    else:
        encoder = load_text_encoder(folder / "text_encoder", folder / "tokenizer", text_len=tiny.text_len)
    torch.testing.assert_close(encoder.encode(PROMPT), tiny.prompt_encoder().encode(PROMPT), atol=0, rtol=0)


def test_text_encoder_from_original_file(tiny: TinyComponents, folder: Path, tmp_path: Path) -> None:
    torch.save(_original_t5_state_dict(tiny.text_encoder), tmp_path / "t5-enc.pth")
    encoder = load_text_encoder(
        tmp_path / "t5-enc.pth", folder / "tokenizer", text_len=tiny.text_len, config=tiny.text_encoder.config
    )
    _same_weights(encoder.text_encoder, tiny.text_encoder)
    model = encoder.text_encoder
    assert model.shared.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(encoder.encode(PROMPT), tiny.prompt_encoder().encode(PROMPT), atol=0, rtol=0)


def test_bf16_original_file_is_cast_to_the_requested_dtype(
    tiny: TinyComponents, folder: Path, tmp_path: Path
) -> None:
    """The real ``models_t5_umt5-xxl-enc-bf16.pth`` is bfloat16; the server asks for float32 on CPU."""
    original = {key: value.bfloat16() for key, value in _original_t5_state_dict(tiny.text_encoder).items()}
    torch.save(original, tmp_path / "t5-enc-bf16.pth")
    encoder = load_text_encoder(
        tmp_path / "t5-enc-bf16.pth", folder / "tokenizer", config=tiny.text_encoder.config
    )
    assert encoder.dtype == torch.float32
    weight = encoder.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight
    torch.testing.assert_close(weight, original["blocks.0.attn.q.weight"].float(), atol=0, rtol=0)


def test_text_encoder_file_with_wrong_keys_is_rejected(
    tiny: TinyComponents, folder: Path, tmp_path: Path
) -> None:
    original = _original_t5_state_dict(tiny.text_encoder)
    del original["blocks.1.ffn.gate.0.weight"]
    torch.save(original, tmp_path / "t5-enc.pth")
    with pytest.raises(ValueError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_0\.weight"):
        load_text_encoder(tmp_path / "t5-enc.pth", folder / "tokenizer", config=tiny.text_encoder.config)


def test_umt5_xxl_config_matches_wan() -> None:
    config = umt5_xxl_config()
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (
        4096,
        10240,
        24,
        64,
        64,
    )
    assert config.vocab_size == 256384 and config.relative_attention_num_buckets == 32
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"  # tanh GELU, as Wan's T5 uses
