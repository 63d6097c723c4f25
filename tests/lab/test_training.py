"""Lab training (``drift_lab.train`` and its stages): runs, reproducibility, and train/inference consistency."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drift_lab.model import PRESETS, TrainingConfig, build_lab_components
from drift_lab.train import RunOptions, main, train_lab_model
from drift_lab.training_data import ClipPool, encode_prompts, render_clips
from drift_lab.training_loop import warmup_cosine
from drift_lab.training_transformer import (
    clip_loss,
    denoising_grid,
    teacher_forced_flows,
    train_transformer,
)
from drift_lab.training_vae import latent_guide, random_crops
from drift_lab.world import DATA_VERSION, sample_scene
from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline

MICRO = PRESETS["micro"]
WEIGHTS = ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module's many tiny kernels on one thread: on a busy 2-core machine, thread synchronisation
    would otherwise cost more than the arithmetic (10x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step autoencoder + 2-step transformer run of the micro preset through the command line."""
    out = tmp_path_factory.mktemp("train") / "micro-seed7"
    steps = ["--steps-vae", "2", "--steps", "2", "--log-every", "1"]
    assert main(["--preset", "micro", "--seed", "7", "--out", str(out), *steps]) == 0
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name in WEIGHTS:
        tensors.update({f"{name}:{k}": v for k, v in load_file(folder / name).items()})
    return tensors


def test_cli_run_writes_a_loadable_folder(cli_run: Path) -> None:
    metadata = json.loads((cli_run / "training.json").read_text())
    assert metadata["command"].startswith("python -m drift_lab.train --preset micro --seed 7")
    assert metadata["seed"] == 7 and metadata["data_version"] == DATA_VERSION
    assert metadata["preset"]["name"] == "micro" and metadata["clip_chunks"] == MICRO.training.clip_chunks
    assert metadata["vae_steps"] == 2 and metadata["steps"] == 2
    assert set(metadata["losses"]) >= {"vae_mse", "vae_guide", "transformer_x0_mse"}
    assert all(np.isfinite(v) for v in metadata["losses"].values())
    assert metadata["world"]["height"] == 32 and metadata["wall_seconds"] > 0
    assert "Drift-lab model `micro` (seed 7)" in (cli_run / "MODEL_CARD.md").read_text()
    bundle = load_model(ModelSpec(model=str(cli_run)))
    assert bundle.default_size == (32, 32)
    # The pool's statistics were written into the VAE config (not Wan's defaults).
    assert bundle.vae.config.latents_mean == metadata["latents_mean"]
    # Training changed the weights the seed initialised.
    fresh = build_lab_components(MICRO, 7)
    trained = bundle.transformer.base.state_dict()
    assert not all(torch.equal(trained[k], v) for k, v in fresh.transformer.state_dict().items())


def test_same_seed_gives_identical_weights(cli_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    train_lab_model(MICRO, again, RunOptions(seed=7, vae_steps=2, steps=2, log_every=10))
    first, second = _weights(cli_run), _weights(again)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"weights differ between two runs of one seed: {different[:5]}"


def test_bfloat16_autocast_run(tmp_path: Path) -> None:
    """The mixed-precision path (the GPU preset's ``--dtype bfloat16``) runs end to end on the CPU."""
    metadata = train_lab_model(MICRO, tmp_path / "bf16", RunOptions(seed=1, vae_steps=1, steps=1, dtype="bfloat16"))
    assert metadata["dtype"] == "bfloat16" and all(np.isfinite(v) for v in metadata["losses"].values())
    assert load_model(ModelSpec(model=str(tmp_path / "bf16"))).vae.dtype == torch.float32


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "micro", "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "nope", "--out", str(tmp_path / "y")])


def test_warmup_cosine_schedule() -> None:
    factor = warmup_cosine(warmup=4, total=20, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.25) and factor(3) == pytest.approx(1.0)
    assert factor(4) == pytest.approx(1.0) and factor(20) == pytest.approx(0.1)
    values = [factor(step) for step in range(4, 21)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_latent_guide_packs_pooled_colours_into_latent_cells() -> None:
    x = torch.zeros(1, 3, 5, 16, 16)
    x[:, 0, 0, 0:4, 4:8] = 1.0  # frame 0, red, the top-right 4x4 cell of latent cell (0, 0)
    x[:, 2, 1:5, 8:12, 8:12] = 0.5  # frames 1-4 (latent frame 1), blue, top-left cell of latent cell (1, 1)
    x[:, 2, 4, 8:12, 8:12] = 1.0  # only the last of the four frames brighter: the group is averaged
    guide = latent_guide(x)
    assert guide.shape == (1, 12, 2, 2, 2)
    expected = torch.zeros_like(guide)
    expected[0, 0 * 4 + 1, 0, 0, 0] = 1.0  # channel = colour * 4 + sub-row * 2 + sub-column
    expected[0, 2 * 4 + 0, 1, 1, 1] = (0.5 * 3 + 1.0) / 4
    torch.testing.assert_close(guide, expected)


def test_random_crops_stay_on_the_latent_grid() -> None:
    clips = render_clips(MICRO.world, [1, 2, 3], 5)
    cropped = random_crops(clips, 16, np.random.default_rng(0))
    assert cropped.frames.shape == (3, 5, 16, 16, 3) and cropped.captions == clips.captions
    for full, crop in zip(clips.frames, cropped.frames, strict=True):
        matches = [
            (r, c)
            for r in range(0, 17, 8)
            for c in range(0, 17, 8)
            if np.array_equal(full[:, r : r + 16, c : c + 16], crop)
        ]
        assert matches
    assert random_crops(clips, None, np.random.default_rng(0)) is clips


@pytest.fixture(scope="module")
def micro_model() -> tuple[CausalWanTransformer, torch.Tensor]:
    components = build_lab_components(MICRO, seed=2)
    model = CausalWanTransformer(components.transformer, MICRO.text_len, "sdpa")
    prompt = components.prompt_encoder().encode(sample_scene(3).caption)
    return model, prompt


def test_training_context_matches_the_inference_cache(micro_model) -> None:
    """Teacher-forced flows equal Self Forcing's own calls over its KV cache, chunk by chunk."""
    model, prompt = micro_model
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(1, 9, 16, 4, 4, generator=generator)
    noise = torch.randn(1, 9, 16, 4, 4, generator=generator)
    t = float(denoising_grid()[2])
    noisy = (1 - t / 1000) * clean + t / 1000 * noise
    with torch.no_grad():
        flows = teacher_forced_flows(
            model, noisy, torch.full((1, 3), t), clean, torch.zeros(1), model.encode_text(prompt)
        )
    pipeline = build_pipeline("self_forcing", model)
    for chunk in range(3):
        stream = pipeline.open(prompt, (16, 4, 4), SeededNoise(0), num_blocks=3)
        if chunk:
            stream.prefill([Chunk(i, 3 * i, clean[:, 3 * i : 3 * i + 3]) for i in range(chunk)])
        expected = stream.block_call(noisy[:, 3 * chunk : 3 * chunk + 3], t)
        torch.testing.assert_close(flows[:, 3 * chunk : 3 * chunk + 3], expected, atol=1e-5, rtol=1e-5)


def test_differentiable_text_context_matches_encode_text(micro_model) -> None:
    model, prompt = micro_model
    reference = model.encode_text(prompt)
    model.base.requires_grad_(True)
    try:
        text = model.text_context(prompt)
    finally:
        model.base.requires_grad_(False)
    assert text.keys[0].requires_grad and text.values[-1].requires_grad
    for a, b in zip(text.keys + text.values, reference.keys + reference.values, strict=True):
        torch.testing.assert_close(a.detach(), b)


def test_loss_decreases_when_overfitting_a_fixed_batch() -> None:
    components = build_lab_components(MICRO, seed=5)
    model = CausalWanTransformer(components.transformer, MICRO.text_len, "sdpa")
    latents = torch.randn(2, 6, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    prompts = encode_prompts(components.prompt_encoder(), [sample_scene(1).caption, sample_scene(2).caption], "cpu")
    pool = ClipPool(latents, prompts, ["a", "b"])

    def fixed_loss() -> float:
        with torch.no_grad():
            timesteps = torch.full((2, 2), float(denoising_grid()[1]))
            return clip_loss(
                model, latents, model.encode_text(prompts), timesteps, torch.zeros(2), torch.Generator().manual_seed(9)
            ).item()

    before = fixed_loss()
    config = TrainingConfig(steps=30, batch=2, lr=3e-3, warmup_steps=2, clip_chunks=2)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    progress = train_transformer(model, pool, config, rng, generator, torch.float32, 10)
    after = fixed_loss()
    assert after < 0.85 * before, f"x0 loss {before:.4f} -> {after:.4f}"
    assert progress.history[-1]["x0_mse"] < progress.history[0]["x0_mse"]
    assert not any(p.requires_grad for p in model.parameters())  # frozen again for the server
