"""Lab model presets, components, folders and the latent encoding (``drift_lab.model``, ``drift_lab.latents``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_lab.latents import (
    denormalise_latents,
    encode_frames,
    encode_raw,
    latent_frame_count,
    latent_statistics,
    normalise_latents,
    register_latent_statistics,
)
from drift_lab.model import (
    MODEL_CARD_FILE,
    PRESETS,
    TRAINING_FILE,
    build_lab_components,
    get_preset,
    model_card,
    save_lab_model,
)
from drift_lab.world import VOCABULARY, WorldSpec, render, sample_scene
from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.models.vae import StreamingVaeDecoder
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline


@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    components = build_lab_components(PRESETS["smoke"], seed=0)
    metadata = {"seed": 0, "preset": PRESETS["smoke"].as_dict(), "data_version": "test"}
    folder = tmp_path_factory.mktemp("lab") / "smoke"
    return save_lab_model(components, folder, default_size=(64, 64), metadata=metadata)


@pytest.fixture(scope="module")
def micro_vae():
    """A random micro VAE with non-trivial latent statistics (so normalisation is not the identity)."""
    vae = build_lab_components(PRESETS["micro"], seed=1).vae
    channels = vae.config.z_dim
    register_latent_statistics(vae, [0.1 * c - 0.5 for c in range(channels)], [0.5 + 0.1 * c for c in range(channels)])
    return vae


def test_presets_have_the_required_sizes() -> None:
    smoke, gpu = PRESETS["smoke"], PRESETS["gpu"]
    assert smoke.frame_size == (64, 64) and smoke.latent_size == (8, 8)
    assert gpu.frame_size == (128, 128) and gpu.latent_size == (16, 16)
    assert smoke.training.clip_chunks == 3 and gpu.training.clip_chunks == 7
    transformer = build_lab_components(gpu, 0).transformer
    assert 10e6 <= sum(p.numel() for p in transformer.parameters()) <= 30e6


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"text_len": 10}, "text_len"),
        ({"world": WorldSpec(height=40, width=64)}, "world height and width"),
        ({"text_encoder": {**PRESETS["smoke"].text_encoder, "d_model": 8}}, "text_encoder.d_model"),
        ({"transformer": {**PRESETS["smoke"].transformer, "in_channels": 8}}, "transformer.in_channels"),
        ({"transformer": {**PRESETS["smoke"].transformer, "patch_size": (1, 1, 1)}}, "transformer.patch_size"),
    ],
)
def test_preset_validation_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(PRESETS["smoke"], **change)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vae_clip_frames": 6}, "vae_clip_frames"),
        ({"clip_chunks": 1}, "clip_chunks"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"context_noise_aug": 1000.0}, "context_noise_aug"),
    ],
)
def test_training_validation_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"training.{field}"):
        PRESETS["smoke"].with_training(**change)


def test_unknown_preset_is_an_error() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("huge")


def test_components_are_seeded() -> None:
    a, b, c = (build_lab_components(PRESETS["micro"], seed) for seed in (3, 3, 4))
    first, second, other = (x.transformer.state_dict() for x in (a, b, c))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tokenizer_knows_every_caption_word() -> None:
    components = build_lab_components(PRESETS["smoke"], 0)
    tokenizer = components.tokenizer
    unk = tokenizer.unk_token_id
    ids = tokenizer(list(VOCABULARY), add_special_tokens=False).input_ids
    assert all(len(word_ids) == 1 and word_ids[0] != unk for word_ids in ids)
    assert len({word_ids[0] for word_ids in ids}) == len(VOCABULARY)
    for seed in range(40):
        caption = sample_scene(seed).caption
        encoded = tokenizer(caption, padding="max_length", max_length=components.text_len).input_ids
        assert unk not in encoded
        assert encoded.count(tokenizer.eos_token_id) == 1  # not truncated: </s> made it in


def test_smoke_folder_loads_and_generates_a_chunk(smoke_folder: Path) -> None:
    size = sum(p.stat().st_size for p in smoke_folder.rglob("*") if p.is_file())
    assert size < 4 * 2**20, f"smoke folder is {size / 2**20:.2f} MiB"
    assert (smoke_folder / TRAINING_FILE).is_file() and (smoke_folder / MODEL_CARD_FILE).is_file()
    bundle = load_model(ModelSpec(model=str(smoke_folder)))
    assert bundle.default_size == (64, 64)
    assert bundle.transformer.text_len == PRESETS["smoke"].text_len
    pipeline = build_pipeline("self_forcing", bundle.transformer)
    prompt = bundle.prompt_encoder.encode(sample_scene(5).caption)
    stream = pipeline.open(prompt, bundle.latent_shape(64, 64), SeededNoise(0), num_blocks=1)
    chunk = next(stream)
    assert chunk.latents.shape == (1, 3, 16, 8, 8)
    assert torch.isfinite(chunk.latents).all()


def test_encode_frames_shapes_and_frame_count_check(micro_vae) -> None:
    frames = render(sample_scene(2, PRESETS["micro"].world), 0, 9)
    latents = encode_frames(micro_vae, frames)
    assert latents.shape == (1, 3, 16, 4, 4) and latents.dtype == torch.float32
    for bad in (8, 10):
        with pytest.raises(ValueError, match="frames"):
            encode_frames(micro_vae, frames[:bad] if bad < 9 else np.concatenate([frames, frames[:1]]))
    with pytest.raises(ValueError, match="frames"):
        encode_frames(micro_vae, frames.astype(np.float32))
    assert [latent_frame_count(t) for t in (1, 5, 33)] == [1, 2, 9]


def test_normalisation_is_the_decoders_inverse(micro_vae) -> None:
    frames = render(sample_scene(4, PRESETS["micro"].world), 0, 5)
    raw = encode_raw(micro_vae, frames)
    normalised = encode_frames(micro_vae, frames)
    # The latent statistics are not the identity here, so normalising changed the values.
    assert not torch.allclose(normalised, raw, atol=1e-2)
    torch.testing.assert_close(denormalise_latents(micro_vae, normalised), raw, atol=1e-5, rtol=1e-5)
    # The server's decoder, given the normalised latents, decodes what the VAE decodes from the raw ones.
    streamed = StreamingVaeDecoder(micro_vae).decode_chunk(normalised)
    with torch.no_grad():
        direct = micro_vae.decode(raw.permute(0, 2, 1, 3, 4)).sample.permute(0, 2, 1, 3, 4)
    assert streamed.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(streamed, direct, atol=1e-5, rtol=1e-5)


def test_latent_statistics_make_channels_standard(micro_vae) -> None:
    generator = torch.Generator().manual_seed(0)
    offsets = torch.linspace(-3, 3, 16).view(1, 1, 16, 1, 1)
    scales = torch.linspace(0.2, 4, 16).view(1, 1, 16, 1, 1)
    clips = [torch.randn(2, 3, 16, 4, 4, generator=generator) * scales + offsets for _ in range(3)]
    mean, std = latent_statistics(clips)
    vae = build_lab_components(PRESETS["micro"], seed=1).vae
    register_latent_statistics(vae, mean, std)
    normalised = normalise_latents(vae, torch.cat(clips)).permute(2, 0, 1, 3, 4).flatten(1)
    torch.testing.assert_close(normalised.mean(1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std(1, correction=0), torch.ones(16), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="latents_std"):
        register_latent_statistics(vae, mean, [0.0] * 16)
    with pytest.raises(ValueError, match="16 values"):
        register_latent_statistics(vae, mean[:4], std)


def test_model_card_reports_metadata_and_gate() -> None:
    metadata = {
        "seed": 1,
        "preset": {"name": "smoke"},
        "data_version": "world-v9",
        "losses": {"transformer_x0_mse": 0.25},
        "gate": {"pass": False, "checks": {"survival": {"value": 0.5, "rule": ">", "threshold": 0.99, "pass": False}}},
    }
    card = model_card(metadata)
    assert "world-v9" in card and "seed 1" in card and "transformer_x0_mse: 0.25" in card
    assert "Quality gate: FAIL" in card and "survival: 0.5" in card and "not" in card
