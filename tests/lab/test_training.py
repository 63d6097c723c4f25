"""Lab training (``drift_lab.train`` and its stages): runs, reproducibility, and train/inference consistency."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drift_lab import training_data
from drift_lab.gate import training_state
from drift_lab.model import PRESETS, TrainingConfig, build_lab_components
from drift_lab.rollout import load_lab_model
from drift_lab.train import CHECKPOINT_FILE, SNAPSHOT_FOLDER, RunOptions, _initialise_from, main, train_lab_model
from drift_lab.training_data import ClipPool, build_pool, encode_prompts, latent_object_cells, render_clips
from drift_lab.training_decoder import main as decoder_main
from drift_lab.training_loop import object_loss_weights, warmup_cosine
from drift_lab.training_transformer import (
    clip_loss,
    denoising_grid,
    teacher_forced_flows,
    train_transformer,
)
from drift_lab.training_vae import latent_guide, object_weights, random_crops
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
            model, noisy, torch.full((1, 3), t), clean, torch.zeros(1), [model.encode_text(prompt)] * 3
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
    pool = ClipPool(latents, prompts[:, None].expand(-1, 2, -1, -1), [("a", "a"), ("b", "b")])

    def fixed_loss() -> float:
        with torch.no_grad():
            timesteps = torch.full((2, 2), float(denoising_grid()[1]))
            return clip_loss(
                model, latents, [model.encode_text(prompts)] * 2, timesteps, torch.zeros(2),
                torch.Generator().manual_seed(9),
            ).item()  # fmt: skip

    before = fixed_loss()
    config = TrainingConfig(steps=30, batch=2, lr=3e-3, warmup_steps=2, clip_chunks=2)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    progress = train_transformer(model, pool, config, rng, generator, torch.float32, 10)
    after = fixed_loss()
    assert after < 0.85 * before, f"x0 loss {before:.4f} -> {after:.4f}"
    assert progress.history[-1]["x0_mse"] < progress.history[0]["x0_mse"]
    assert not any(p.requires_grad for p in model.parameters())  # frozen again for the server


def _tensors(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint state, by path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {}
    return {path: t for key, value in items for path, t in _tensors(value, f"{prefix}/{key}").items()}


def _assert_identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys() and first
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"tensors differ: {different[:5]}"


def _without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def _interrupted_and_resumed(out: Path, options: RunOptions, stop_after: int) -> dict:
    """Run ``options`` for ``stop_after`` steps into ``out``, then resume it from its checkpoint to the end."""
    stopped = train_lab_model(MICRO, out, dataclasses.replace(options, stop_after=stop_after))
    assert not stopped["finished"] and stopped["steps_done"] == stop_after
    checkpoint = out / CHECKPOINT_FILE
    assert checkpoint.is_file() and not checkpoint.with_name(CHECKPOINT_FILE + ".tmp").exists()
    return train_lab_model(MICRO, out, dataclasses.replace(options, resume=checkpoint))


@pytest.fixture(scope="module")
def vae_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunOptions]:
    """A finished 5-step micro autoencoder (stage 1) and the options that trained it."""
    out = tmp_path_factory.mktemp("stage") / "vae"
    options = RunOptions(seed=3, vae_steps=5, log_every=2, stage="vae")
    record = train_lab_model(MICRO, out, options)
    assert record["finished"] and record["steps_done"] == 5 and record["stage"] == "vae"
    return out, options


def test_resumed_vae_stage_equals_an_uninterrupted_run(vae_stage, tmp_path: Path) -> None:
    full, options = vae_stage
    record = _interrupted_and_resumed(tmp_path / "resumed", options, stop_after=3)  # mid log window
    assert record["finished"] and record["steps_done"] == 5
    resumed = tmp_path / "resumed"
    weights = "vae/diffusion_pytorch_model.safetensors"
    _assert_identical(load_file(full / weights), load_file(resumed / weights))
    # Optimiser moments, scheduler and random streams too: a further resume would also continue identically.
    first, second = (torch.load(folder / CHECKPOINT_FILE, weights_only=True) for folder in (full, resumed))
    _assert_identical(_tensors(first), _tensors(second))
    assert first["random"]["numpy"] == second["random"]["numpy"]
    assert first["scheduler"] == second["scheduler"]
    full_history = json.loads((full / "training.json").read_text())["history"]["vae"]
    assert _without_seconds(record["history"]["vae"]) == _without_seconds(full_history)


def test_resumed_transformer_stage_equals_an_uninterrupted_run(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    options = RunOptions(seed=4, steps=4, log_every=10, stage="transformer", vae_from=vae_folder)
    full = train_lab_model(MICRO, tmp_path / "full", options)
    resumed = _interrupted_and_resumed(tmp_path / "resumed", options, stop_after=2)
    assert full["finished"] and resumed["finished"]
    _assert_identical(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"))
    assert resumed["losses"] == full["losses"] and resumed["vae_from"] == str(vae_folder)
    assert resumed["stage_seconds"]["vae"] == json.loads((vae_folder / "training.json").read_text())["wall_seconds"]


def test_the_transformer_stage_snapshots_its_model_while_it_trains(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    out = tmp_path / "model"
    options = RunOptions(seed=4, steps=4, log_every=10, stage="transformer", vae_from=vae_folder)
    train_lab_model(MICRO, out, dataclasses.replace(options, stop_after=2))
    snapshot = out / SNAPSHOT_FOLDER
    assert not (out / "model_index.json").exists() and not (out / f"{SNAPSHOT_FOLDER}.partial").exists()
    # A whole model folder, with the transformer and text encoder of the checkpoint it follows.
    model = load_lab_model(snapshot)
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    _assert_identical(model.bundle.transformer.base.state_dict(), checkpoint["model"])
    assert model.metadata["finished"] is False and model.metadata["steps_done"] == 2
    assert model.metadata["vae_from"] == str(vae_folder)
    assert "2 of 4 (unfinished" in (snapshot / "MODEL_CARD.md").read_text()
    assert training_state(model.metadata) == {"finished": False, "steps_done": 2, "steps": 4}
    # Finishing writes the model into the run's folder and drops the snapshot.
    train_lab_model(MICRO, out, dataclasses.replace(options, resume=out / CHECKPOINT_FILE))
    assert (out / "model_index.json").is_file() and not snapshot.exists()
    assert training_state(load_lab_model(out).metadata) == {"finished": True, "steps_done": 4, "steps": 4}


def test_staged_cli_writes_a_loadable_model_on_the_given_autoencoder(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    out = tmp_path / "model"
    arguments = ["--preset", "micro", "--seed", "5", "--out", str(out), "--stage", "transformer"]
    assert main([*arguments, "--vae-from", str(vae_folder), "--steps", "2", "--log-every", "1"]) == 0
    metadata = json.loads((out / "training.json").read_text())
    assert set(metadata["losses"]) >= {"vae_mse", "transformer_x0_mse"} and metadata["vae_steps"] == 5
    bundle = load_model(ModelSpec(model=str(out)))
    # The autoencoder is stage 1's (with the pool's latent statistics written into its config).
    _assert_identical(bundle.vae.state_dict(), load_file(vae_folder / "vae/diffusion_pytorch_model.safetensors"))
    assert bundle.vae.config.latents_mean == metadata["latents_mean"]


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(vae_stage, tmp_path: Path, capsys) -> None:
    vae_folder, _ = vae_stage
    checkpoint = str(vae_folder / CHECKPOINT_FILE)
    arguments = ["--preset", "micro", "--stage", "vae", "--steps-vae", "5", "--out", str(tmp_path / "x")]
    assert main([*arguments, "--seed", "9", "--resume", checkpoint]) == 2
    assert "another run (different seed)" in capsys.readouterr().err
    assert main([*arguments, "--seed", "3", "--steps-vae", "6", "--resume", checkpoint]) == 2
    assert "another run (different autoencoder)" in capsys.readouterr().err
    # The transformer's settings are not the autoencoder's business: its checkpoint still resumes.
    assert main([*arguments, "--seed", "3", "--steps", "7", "--resume", checkpoint]) == 0
    assert main(["--preset", "micro", "--out", str(tmp_path / "y"), "--resume", checkpoint]) == 2
    assert "staged run" in capsys.readouterr().err


def test_the_transformer_stage_refuses_an_unfinished_autoencoder(tmp_path: Path) -> None:
    stopped = train_lab_model(MICRO, tmp_path / "vae", RunOptions(vae_steps=4, stage="vae", stop_after=1))
    assert not stopped["finished"] and (tmp_path / "vae/vae/config.json").is_file()  # a snapshot to gate
    with pytest.raises(ValueError, match=r"unfinished \(1/4 steps\)"):
        train_lab_model(MICRO, tmp_path / "m", RunOptions(stage="transformer", vae_from=tmp_path / "vae"))
    # Asked for explicitly, it trains on the snapshot and records how far stage 1 had got.
    options = RunOptions(stage="transformer", vae_from=tmp_path / "vae", unfinished_vae=True, steps=2)
    model = train_lab_model(MICRO, tmp_path / "m", options)
    assert model["finished"] and model["vae_steps_done"] == 1 and model["vae_steps"] == 4
    assert "1 of 4 planned (stage 1 stopped early)" in (tmp_path / "m/MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="unfinished_vae goes with stage decoder or transformer"):
        RunOptions(stage="vae", unfinished_vae=True).validate()


@pytest.fixture(scope="module")
def decoder_stage(vae_stage, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunOptions]:
    """Stage 1b on the micro autoencoder (3 steps) and the options that ran it."""
    vae_folder, _ = vae_stage
    out = tmp_path_factory.mktemp("stage") / "decoder"
    options = RunOptions(seed=6, log_every=1, stage="decoder", vae_from=vae_folder)
    record = train_lab_model(MICRO, out, options)
    assert record["finished"] and record["steps_done"] == MICRO.training.decoder_steps
    return out, options


def test_the_decoder_stage_tunes_the_decoder_alone_and_resumes_exactly(vae_stage, decoder_stage, tmp_path) -> None:
    (vae_folder, _), (full, options) = vae_stage, decoder_stage
    weights = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(vae_folder / weights), load_file(full / weights)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # The encoder (so every latent, and every transformer trained on them) is untouched; the decoder learnt.
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed)
    record = json.loads((full / "training.json").read_text())
    assert record["stage"] == "vae" and record["decoder"]["finished"]
    assert record["decoder"]["clip_frames"] == 1 + 4 * (MICRO.training.clip_chunks * 3 - 1)
    resumed = _interrupted_and_resumed(tmp_path / "resumed", options, stop_after=1)
    assert resumed["finished"]
    _assert_identical(after, load_file(tmp_path / "resumed" / weights))


def test_a_tuned_decoder_installs_into_models_of_its_encoder_only(
    vae_stage, decoder_stage, cli_run: Path, tmp_path: Path, capsys
) -> None:
    (vae_folder, _), (decoder_folder, _) = vae_stage, decoder_stage
    model = tmp_path / "model"
    train_lab_model(MICRO, model, RunOptions(seed=5, steps=2, stage="transformer", vae_from=vae_folder))
    stats = json.loads((model / "vae/config.json").read_text())["latents_mean"]
    assert decoder_main([str(decoder_folder), str(model)]) == 0
    weights = "vae/diffusion_pytorch_model.safetensors"
    _assert_identical(load_file(model / weights), load_file(decoder_folder / weights))
    # The model keeps its own latent statistics (its transformer's pool), and says what was installed.
    assert json.loads((model / "vae/config.json").read_text())["latents_mean"] == stats
    record = json.loads((model / "training.json").read_text())
    assert record["decoder"]["installed_from"] == str(decoder_folder)
    assert record["stage_seconds"].keys() == {"vae", "transformer", "decoder"}
    assert record["wall_seconds"] == pytest.approx(sum(record["stage_seconds"].values()), abs=0.2)
    assert "3 steps on 33-frame clips, encoder frozen" in (model / "MODEL_CARD.md").read_text()
    load_model(ModelSpec(model=str(model)))
    # A model of another autoencoder would decode its latents with a decoder made for other ones: refused.
    assert decoder_main([str(decoder_folder), str(cli_run)]) == 2
    assert "is not the one" in capsys.readouterr().err
    # A transformer trained on the tuned autoencoder records the decoder stage itself.
    options = RunOptions(seed=5, steps=1, stage="transformer", vae_from=decoder_folder)
    direct = train_lab_model(MICRO, tmp_path / "direct", options)
    assert direct["decoder"]["finished"] and "decoder" in direct["stage_seconds"]


def test_a_decoder_continued_from_a_tuned_one_counts_both_stages(decoder_stage, tmp_path: Path) -> None:
    decoder_folder, _ = decoder_stage
    first = json.loads((decoder_folder / "training.json").read_text())["decoder"]
    continued = tmp_path / "continued"
    train_lab_model(MICRO, continued, RunOptions(seed=7, stage="decoder", vae_from=decoder_folder))
    record = json.loads((continued / "training.json").read_text())["decoder"]
    assert record["from"] == str(decoder_folder) and "history" not in record["continues"]
    assert record["continues"]["wall_seconds"] == first["wall_seconds"]
    # A model given it is charged both decoder stages, and its card says what the decoder went through.
    model = tmp_path / "model"
    options = RunOptions(seed=5, steps=1, stage="transformer", vae_from=continued)
    metadata = train_lab_model(MICRO, model, options)
    both = record["wall_seconds"] + first["wall_seconds"]
    assert metadata["stage_seconds"]["decoder"] == pytest.approx(both, abs=0.1)
    assert metadata["wall_seconds"] == pytest.approx(sum(metadata["stage_seconds"].values()), abs=0.2)
    frames = record["clip_frames"]
    card = (model / "MODEL_CARD.md").read_text()
    assert f"3 steps on {frames}-frame clips, after 3 on {frames}-frame clips, encoder frozen" in card
    # Installing it again over itself replaces the stage's time instead of adding to it.
    assert decoder_main([str(continued), str(model)]) == 0
    reinstalled = json.loads((model / "training.json").read_text())
    assert reinstalled["stage_seconds"]["decoder"] == pytest.approx(both, abs=0.1)
    assert reinstalled["wall_seconds"] == pytest.approx(metadata["wall_seconds"], abs=0.1)


def test_object_weights_follow_the_crop() -> None:
    clips = render_clips(MICRO.world, [1, 2, 3], 5)
    cropped = random_crops(clips, 16, np.random.default_rng(0))
    for full, crop, full_objects, objects in zip(clips.frames, cropped.frames, clips.objects, cropped.objects,
                                                 strict=True):  # fmt: skip
        windows = [(r, c) for r in range(0, 17, 8) for c in range(0, 17, 8)
                   if np.array_equal(full[:, r : r + 16, c : c + 16], crop)]  # fmt: skip
        assert any(np.array_equal(full_objects[:, r : r + 16, c : c + 16], objects) for r, c in windows)
    assert object_weights(cropped.objects, 1.0, torch.device("cpu")) is None  # plain MSE, bit for bit
    weights = object_weights(cropped.objects, 8.0, torch.device("cpu"))
    assert weights is not None and weights.shape == (3, 1, 5, 16, 16)
    assert torch.equal(weights == 8.0, torch.from_numpy(cropped.objects)[:, None])
    assert torch.all((weights == 1.0) | (weights == 8.0))


def test_latent_object_cells_mark_the_cells_encoding_an_object() -> None:
    objects = np.zeros((1, 9, 32, 32), dtype=bool)
    objects[0, 0, 3, 30] = True  # frame 0 is latent frame 0 on its own
    objects[0, 6, 17, 9] = True  # frames 5-8 are latent frame 2
    cells = latent_object_cells(objects, temporal_scale=4, spatial_scale=8)
    assert cells.shape == (1, 3, 1, 4, 4) and cells.dtype == torch.bool
    assert sorted(map(tuple, cells.nonzero().tolist())) == [(0, 0, 0, 0, 3), (0, 2, 0, 2, 1)]
    with pytest.raises(ValueError, match="objects must be"):
        latent_object_cells(objects[:, :8], temporal_scale=4, spatial_scale=8)


def test_object_weighted_loss_weighs_the_object_cells() -> None:
    assert object_loss_weights(None, 1.0) is None  # the plain mean, bit for bit
    with pytest.raises(ValueError, match="where the objects are"):
        object_loss_weights(None, 4.0)
    components = build_lab_components(MICRO, seed=5)
    model = CausalWanTransformer(components.transformer, MICRO.text_len, "sdpa")
    latents = torch.randn(2, 6, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    text = model.encode_text(encode_prompts(components.prompt_encoder(), ["a", "b"], "cpu"))
    timesteps = torch.full((2, 2), float(denoising_grid()[0]))
    objects = torch.zeros(2, 6, 1, 4, 4, dtype=torch.bool)
    objects[:, :, :, 1, 2] = True

    def loss(weights: torch.Tensor | None) -> float:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(9)
            return clip_loss(model, latents, [text] * 2, timesteps, torch.zeros(2), generator, weights).item()

    plain, weighted = loss(None), loss(object_loss_weights(objects, 4.0))
    assert loss(torch.ones(2, 6, 1, 4, 4)) == pytest.approx(plain, rel=1e-6)
    only_objects = loss(object_loss_weights(objects, 1e6))  # ~ the mean over the object cells alone
    assert min(plain, only_objects) < weighted < max(plain, only_objects)


def test_an_object_weighted_micro_run_trains(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    options = RunOptions(seed=4, steps=2, log_every=1, stage="transformer", vae_from=vae_folder)
    weighted = train_lab_model(MICRO.with_training(object_weight=4.0), tmp_path / "weighted", options)
    plain = train_lab_model(MICRO, tmp_path / "plain", options)
    assert weighted["preset"]["training"]["object_weight"] == 4.0
    assert math.isfinite(weighted["losses"]["transformer_x0_mse"])
    assert weighted["losses"]["transformer_x0_mse"] != plain["losses"]["transformer_x0_mse"]


def test_a_checkpoint_from_before_a_new_training_option_still_resumes(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    options = RunOptions(seed=4, steps=3, log_every=10, stage="transformer", vae_from=vae_folder, stop_after=1)
    out = tmp_path / "model"
    train_lab_model(MICRO, out, options)
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    del checkpoint["identity"]["preset"]["training"]["object_weight"]  # as written before the option existed
    torch.save(checkpoint, out / CHECKPOINT_FILE)
    resumed = dataclasses.replace(options, stop_after=None, resume=out / CHECKPOINT_FILE)
    assert train_lab_model(MICRO, out, resumed)["finished"]
    # A value other than the default is another run: the old run trained at the default.
    with pytest.raises(ValueError, match="another run"):
        train_lab_model(MICRO.with_training(object_weight=2.0), tmp_path / "other", resumed)


def test_a_fine_tune_starts_from_the_given_model(vae_stage, tmp_path: Path, capsys) -> None:
    vae_folder, _ = vae_stage
    source = tmp_path / "source"
    train_lab_model(MICRO, source, RunOptions(seed=4, steps=2, log_every=10, stage="transformer", vae_from=vae_folder))
    source_record = json.loads((source / "training.json").read_text())
    components = build_lab_components(MICRO, seed=8)
    initial = _initialise_from(components, source, MICRO, vae_folder)
    _assert_identical(components.transformer.state_dict(), load_file(source / WEIGHTS[0]))
    assert initial["steps_done"] == 2 and initial["folder"] == str(source)

    out = tmp_path / "tuned"
    arguments = ["--preset", "micro", "--seed", "8", "--stage", "transformer", "--vae-from", str(vae_folder)]
    assert main([*arguments, "--out", str(out), "--steps", "2", "--init-from", str(source)]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["init_from"]["steps_done"] == 2 and set(record["stage_seconds"]) >= {"init", "transformer"}
    assert record["wall_seconds"] >= source_record["stage_seconds"]["transformer"]
    assert load_model(ModelSpec(model=str(out))).transformer is not None
    # Another architecture is refused, naming the part that differs.
    wider = dataclasses.replace(MICRO, transformer={**MICRO.transformer, "ffn_dim": 96})
    with pytest.raises(ValueError, match="another transformer"):
        _initialise_from(build_lab_components(wider, seed=8), source, wider, vae_folder)
    assert main([*arguments, "--out", str(tmp_path / "x"), "--init-from", str(tmp_path / "missing")]) == 2
    assert "missing is not a model folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stage transformer only"):
        RunOptions(stage="vae", init_from=source).validate()


@pytest.mark.parametrize("name", ["cpu-wide-objects", "cpu-wide-continued"])
def test_the_fine_tune_presets_fit_the_models_they_continue(name: str) -> None:
    tune, base = PRESETS[name], PRESETS["cpu-wide"]
    assert (tune.transformer, tune.world, tune.vae) == (base.transformer, base.world, base.vae)
    # Same seed, same pool: the fine-tune continues on the clips its model was trained on.
    assert tune.training.pool_clips == base.training.pool_clips and tune.training.object_weight > 1
    assert tune.name == name and base.name == "cpu-wide"


@pytest.mark.parametrize(("name", "parameters"), [("cpu-large", (4.5e6, 5.2e6)), ("cpu-deep", (3.6e6, 4.3e6))])
def test_the_larger_presets_share_the_wide_models_autoencoder_and_pool(
    name: str, parameters: tuple[float, float]
) -> None:
    larger, wide = PRESETS[name], PRESETS["cpu-wide"]
    # One autoencoder (--vae-from) and one cached pool serve every transformer size at the same seed.
    assert (larger.world, larger.vae, larger.text_encoder) == (wide.world, wide.vae, wide.text_encoder)
    assert larger.training.pool_clips == wide.training.pool_clips
    assert larger.training.denoising_steps == wide.training.denoising_steps
    transformer = build_lab_components(larger, seed=0).transformer
    low, high = parameters
    assert low <= sum(p.numel() for p in transformer.parameters()) <= high


@pytest.mark.parametrize(("name", "base"), [("cpu-wide-lanes", "cpu-wide"), ("cpu-deep-lanes", "cpu-deep")])
def test_the_lanes_presets_train_on_the_free_worlds_autoencoder(name: str, base: str) -> None:
    lanes, free = PRESETS[name], PRESETS[base]
    assert lanes.world.lanes and lanes.autoencoder_world == free.world == free.vae_world
    assert (lanes.transformer, lanes.vae, lanes.text_encoder) == (free.transformer, free.vae, free.text_encoder)
    assert lanes.as_dict()["autoencoder_world"] == free.world.as_dict()
    # Presets from before autoencoder_world and lanes keep the records they wrote.
    assert "autoencoder_world" not in free.as_dict() and "lanes" not in free.as_dict()["world"]


def test_a_lanes_model_trains_on_the_autoencoder_of_its_free_world(vae_stage, tmp_path: Path) -> None:
    vae_folder, _ = vae_stage
    lanes_world = dataclasses.replace(MICRO.world, lanes=True, max_objects=2)
    preset = dataclasses.replace(MICRO, name="micro-lanes", world=lanes_world, autoencoder_world=MICRO.world)
    options = RunOptions(seed=4, steps=2, log_every=10, stage="transformer", vae_from=vae_folder)
    record = train_lab_model(preset, tmp_path / "lanes", options)
    assert record["finished"] and record["world"]["lanes"] is True
    assert load_lab_model(tmp_path / "lanes").world == lanes_world
    # Without autoencoder_world the preset's autoencoder must have trained on the lanes world itself.
    with pytest.raises(ValueError, match="another world"):
        train_lab_model(dataclasses.replace(preset, autoencoder_world=None), tmp_path / "refused", options)


def test_a_cached_pool_is_reused_only_for_the_same_clips(tmp_path: Path, monkeypatch) -> None:
    components = build_lab_components(MICRO, seed=2)
    encoder = components.prompt_encoder()

    def pool(seeds: list[int]) -> ClipPool:
        return build_pool(components.vae, encoder, MICRO.world, seeds, 9, torch.device("cpu"), cache=tmp_path)

    first = pool([1, 2, 3])
    assert len(list(tmp_path.glob("pool-*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))

    def no_encoding(*args: object) -> None:
        raise AssertionError("a cached pool was encoded again")

    with monkeypatch.context() as patch:
        patch.setattr(training_data, "_encode_clips", no_encoding)
        again = pool([1, 2, 3])
    assert torch.equal(first.latents, again.latents) and torch.equal(first.objects, again.objects)
    assert first.captions == again.captions and torch.equal(first.prompts, again.prompts)
    pool([1, 2, 4])  # other clips: encoded and kept under their own key
    assert len(list(tmp_path.glob("pool-*.pt"))) == 2
    with pytest.raises(ValueError, match="pool_cache"):
        RunOptions(stage="vae", pool_cache=tmp_path).validate()
