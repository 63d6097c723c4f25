"""The model entry point: tiny, diffusers folders, distilled checkpoints; and the generate CLI."""

from __future__ import annotations

import av
import pytest
import torch

from tokentrim_server.cli.generate import main as generate
from tokentrim_server.loading.checkpoints import CheckpointError
from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.loading.model_folder import save_tiny_model_folder
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline


def _first_chunk(bundle, embeds: torch.Tensor | None = None) -> torch.Tensor:
    embeds = bundle.prompt_encoder.encode("a red car") if embeds is None else embeds
    pipeline = build_pipeline("self_forcing", bundle.transformer)
    stream = pipeline.open(embeds, bundle.latent_shape(32, 32), SeededNoise(3), 1)
    return next(stream).latents


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "Wan-tiny-Diffusers", seed=0)


def test_diffusers_folder_loads_the_same_model_as_tiny(tiny_folder) -> None:
    from_folder = load_model(ModelSpec(model=str(tiny_folder)))
    embedded = load_model(ModelSpec(model="tiny"))
    assert from_folder.transformer.text_len == embedded.transformer.text_len
    assert torch.equal(_first_chunk(from_folder), _first_chunk(embedded))


def test_distilled_checkpoint_replaces_the_transformer(tiny_folder, tmp_path) -> None:
    other = load_model(ModelSpec(model="tiny", seed=1))
    wrapped = {
        f"model._fsdp_wrapped_module.{key}": value for key, value in other.transformer.base.state_dict().items()
    }
    checkpoint = tmp_path / "distilled.pt"
    torch.save({"generator_ema": wrapped, "generator": {}}, checkpoint)
    replaced = load_model(ModelSpec(model=str(tiny_folder), checkpoint=str(checkpoint)))
    embeds = replaced.prompt_encoder.encode("a red car")  # seed 1 also changed the tiny text encoder
    assert torch.equal(_first_chunk(replaced, embeds), _first_chunk(other, embeds))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(ModelSpec(model=str(tiny_folder), checkpoint=str(checkpoint), checkpoint_key="generator"))


def test_bad_model_paths_and_dtypes_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model(ModelSpec(model=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(ModelSpec(model=str(tmp_path)))
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(ModelSpec(dtype="int8"))


def test_generate_cli_writes_a_playable_mp4(tmp_path) -> None:
    out = tmp_path / "video.mp4"
    assert generate(["--prompt", "a cat", "--chunks", "2", "--height", "32", "--width", "32", "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 9 + 12
    assert (frames[0].width, frames[0].height) == (32, 32)


def test_bfloat16_keeps_float32_modules_and_tracks_float32() -> None:
    """The GPU dtype path, run on the CPU: fp32-only modules stay fp32 and the latents stay close."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        bundle = load_model(ModelSpec(dtype=dtype))
        embeds = bundle.prompt_encoder.encode("a red car").to(bundle.transformer.dtype)
        results[dtype] = _first_chunk(bundle, embeds).float()
    base = bundle.transformer.base
    assert base.patch_embedding.weight.dtype == torch.bfloat16
    assert base.blocks[0].scale_shift_table.dtype == torch.float32
    assert base.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    error = (results["float32"] - results["bfloat16"]).abs().mean() / results["float32"].abs().mean()
    assert error < 0.02
