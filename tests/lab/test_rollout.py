"""Rollouts: frame bookkeeping, the shared truth, and a rollout's alignment with the world's frames."""

from __future__ import annotations

import pytest
import torch

from drift_lab.arms import get_arm
from drift_lab.model import PRESETS, lab_pipeline_options
from drift_lab.rollout import chunk_first_frame, generate, load_lab_model, make_truth, run_rollout
from drift_lab.training_transformer import denoising_grid
from lab.lab_support import random_lab_folder
from tokentrim_server.pipelines.registry import pipeline_options
from tokentrim_server.pipelines.schedule import denoising_timesteps


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_lab_model(random_lab_folder(tmp_path_factory.mktemp("lab")))


def test_chunk_first_frames_follow_the_causal_vae():
    # Latent frame 0 is video frame 0; latent frame f >= 1 covers video frames 4f - 3 .. 4f.
    assert [chunk_first_frame(k) for k in range(4)] == [0, 9, 21, 33]
    assert chunk_first_frame(2, frames_per_block=1) == 5


def test_lab_model_reads_its_training_record(model):
    assert model.name == "untrained" and model.clip_chunks == 3
    assert (model.world.height, model.world.width, model.world.size_range) == (32, 32, (3.0, 5.0))
    # Recorded before models recorded their schedule: Self Forcing's default one, the training clip as window.
    schedule = {"denoising_steps": [1000, 750, 500, 250], "timestep_shift": 5.0}
    assert model.options("self_forcing") == {**schedule, "local_attn_frames": 9}
    # Rolling Forcing at the trained timesteps: 4 blocks in the window, plus the sink.
    assert model.options("rolling_forcing") == {**schedule, "attention_frames": 15, "cache_frames": 15}


def test_a_model_is_sampled_at_the_schedule_it_was_trained_at():
    config = PRESETS["cpu"].training
    options = lab_pipeline_options(config)
    trained = set(denoising_grid(config).tolist())
    for pipeline, expected_steps in (("self_forcing", 8), ("rolling_forcing", 4)):
        stream_options = pipeline_options(pipeline, options[pipeline])  # validated as a session's would be
        steps = denoising_timesteps(stream_options.denoising_steps, stream_options.timestep_shift)
        assert len(steps) == expected_steps and set(steps) <= trained
    assert options["self_forcing"]["local_attn_frames"] == config.clip_chunks * 3


def test_a_prefix_of_the_truth_encodes_as_inside_the_whole(model):
    short, long = make_truth(model, 5, 1), make_truth(model, 5, 3)
    assert long.latents.shape[1] == 9 and short.scene == long.scene
    assert torch.equal(short.latents, long.latents[:, :3])


def test_rollout_is_aligned_with_the_world_and_reproducible(model):
    truth = make_truth(model, 7, 1)
    first = run_rollout(model, get_arm("self_forcing", "none"), truth, 1, 2)
    assert first.start_frame == 9 and first.frames.shape == (24, 32, 32, 3)
    assert [chunk.index for chunk in first.generated.chunks] == [1, 2] and first.generated.latents.shape[1] == 6
    assert first.metrics.psnr.shape == (24,)
    again = run_rollout(model, get_arm("self_forcing", "none"), truth, 1, 2)
    assert torch.equal(first.generated.latents, again.generated.latents)


@pytest.mark.parametrize("pipeline", ["self_forcing", "rolling_forcing"])
def test_the_flowmo_arm_changes_the_first_generated_chunk(model, pipeline):
    pytest.importorskip("flowmo_plugin", reason="install plugins/flowmo (make install)")
    truth = make_truth(model, 7, 1)
    plain = generate(model, get_arm(pipeline, "none"), truth, 1, 2)
    hooked = generate(model, get_arm(pipeline, "flowmo"), truth, 1, 2)
    assert hooked.latents.shape == plain.latents.shape and [c.index for c in hooked.chunks] == [1, 2]
    assert not torch.equal(hooked.latents[:, :3], plain.latents[:, :3])


def test_rollout_refuses_what_the_truth_cannot_supply(model):
    truth = make_truth(model, 7, 1)
    with pytest.raises(ValueError, match="arm 'oracle' needs 3"):
        run_rollout(model, get_arm("self_forcing", "oracle"), truth, 1, 2)
    with pytest.raises(ValueError, match="prefill_chunks must be >= 1"):
        run_rollout(model, get_arm("self_forcing", "none"), truth, 0, 2)
    with pytest.raises(ValueError, match="needs 2"):
        run_rollout(model, get_arm("self_forcing", "none"), truth, 2, 1)
