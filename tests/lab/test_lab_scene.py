"""The ``lab_scene`` session hook: a lab video's first chunk starts from a render of the scene its prompt names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from drift_lab.prompt_scene import caption_latents
from drift_lab.rollout import LabModel, load_lab_model
from tests.lab.lab_support import random_lab_folder
from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import create_hook
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.pipelines.schedule import denoising_timesteps
from tokentrim_server.policies import create_policy

CAPTION = "a red circle and a small blue square bouncing on a plain gray background"
SEED = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lab_folder(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def model(folder: Path) -> LabModel:
    return load_lab_model(folder)


def _first_chunk(
    model: LabModel,
    folder: Path,
    pipeline: str,
    hooks: list,
    caption: str = CAPTION,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    bundle = model.bundle
    height, width = size or bundle.default_size
    stream = build_pipeline(pipeline, bundle.transformer, model.options(pipeline)).open(
        bundle.prompt_encoder.encode(caption), bundle.latent_shape(height, width), SeededNoise(SEED), num_blocks=2
    )
    with open_runner(stream, create_policy("none"), hooks=hooks, prompt=caption, model=str(folder)) as runner:
        result = next(runner)
    values = result.report.hooks[0].values if result.report.hooks else {}
    return result.chunk.latents, values


@pytest.mark.parametrize("pipeline", ["self_forcing", "rolling_forcing"])
def test_below_the_last_level_the_first_chunk_is_the_render(model: LabModel, folder: Path, pipeline: str) -> None:
    latents, values = _first_chunk(model, folder, pipeline, [create_hook("lab_scene", {"noise_level": 1e-3})])
    render = caption_latents(str(folder), CAPTION, SEED, latents.shape[1])
    torch.testing.assert_close(latents, render, atol=1e-5, rtol=0)
    assert values["takeover_sigma"] == 0.0
    assert values["steps_skipped"] == len(model.options(pipeline)["denoising_steps"])


def test_the_model_takes_over_at_the_first_level_at_or_below_noise_level(model: LabModel, folder: Path) -> None:
    options = model.options("self_forcing")
    steps = denoising_timesteps(options["denoising_steps"], options["timestep_shift"])
    level = steps[len(steps) // 2] / 1000
    hooked, values = _first_chunk(model, folder, "self_forcing", [create_hook("lab_scene", {"noise_level": level})])
    assert values == {"steps_skipped": float(len(steps) // 2), "takeover_sigma": pytest.approx(level)}
    plain, _ = _first_chunk(model, folder, "self_forcing", [])
    render = caption_latents(str(folder), CAPTION, SEED, hooked.shape[1])
    assert not torch.allclose(hooked, plain) and not torch.allclose(hooked, render)
    # noise_level 1: the model denoises from pure noise, as without the hook, bit for bit.
    untouched, values = _first_chunk(model, folder, "self_forcing", [create_hook("lab_scene", {"noise_level": 1.0})])
    assert torch.equal(untouched, plain) and values == {"steps_skipped": 0.0, "takeover_sigma": 1.0}


def test_the_render_shows_what_the_caption_names_and_follows_the_seed(folder: Path) -> None:
    first = caption_latents(str(folder), CAPTION, 1, 3)
    assert first.shape[:2] == (1, 3)
    assert torch.equal(first, caption_latents(str(folder), CAPTION, 1, 3))
    assert not torch.equal(first, caption_latents(str(folder), CAPTION, 2, 3))


def test_sessions_it_cannot_serve_are_refused_saying_why(model: LabModel, folder: Path, tmp_path: Path) -> None:
    hook = [create_hook("lab_scene")]
    with pytest.raises(ValueError, match="needs a drift-lab model folder"):
        _first_chunk(model, tmp_path, "self_forcing", hook)
    with pytest.raises(ValueError, match="'a purple circle'"):
        _first_chunk(model, folder, "self_forcing", [create_hook("lab_scene")],
                     caption="a purple circle bouncing on a plain gray background")
    height, width = model.bundle.default_size
    with pytest.raises(ValueError, match="training frame size"):
        _first_chunk(model, folder, "self_forcing", [create_hook("lab_scene")], size=(2 * height, 2 * width))


def test_the_effect_benchmark_finds_the_scene_the_hook_renders(capsys: pytest.CaptureFixture[str]) -> None:
    # benchmarks/lab_prompts.py on the demo's model: at the default level every seed keeps both objects
    # (24 of 24 in benchmarks/RESULTS.md), and its JSON rows say so.
    from benchmarks.lab_prompts import main

    assert main(["--levels", "0.5", "--seeds", "2", "--chunks", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(row["noise_level"], row["seeds"], row["seeds_keeping_scene"]) for row in rows] == [(0.5, 2, 2)]
    assert rows[0]["checked_frames"] == [0, 8, 10, 20] and rows[0]["found_per_checked_frame"] == [1.0] * 4
    assert rows[0]["stale_after_switch"] is None


def test_the_effect_benchmark_sees_the_demo_switch_replace_the_colours(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo's switch before chunk 2 of 3: the first caption's colours are checked up to frame 20, the second's
    # at frame 32; the old colours are gone there (stale 0) and new ones drawn.
    from benchmarks.lab_prompts import main

    switch = "2:a yellow circle and a green square bouncing on a plain gray background"
    assert main(["--levels", "0.5", "--seeds", "2", "--chunks", "3", "--switch", switch]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rows[0]["checked_frames"] == [0, 8, 20, 32] and rows[0]["found_per_checked_frame"][:3] == [1.0] * 3
    assert rows[0]["stale_after_switch"] == 0.0 and rows[0]["found_per_checked_frame"][3] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seeds", "0"], "--seeds and --chunks must be >= 1"),
        (["--chunks", "0"], "--seeds and --chunks must be >= 1"),
        (["--levels", "0"], "--levels: every level must be in (0, 1]"),
        (["--chunks", "3", "--switch", "3:a red circle on a plain gray background"], "--switch: CHUNK must be <"),
    ],
)
def test_the_effect_benchmark_refuses_what_it_cannot_measure(arguments: list[str], message: str) -> None:
    from benchmarks.lab_prompts import main

    with pytest.raises(SystemExit, match=re.escape(message)):
        main(arguments)
