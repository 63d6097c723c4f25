"""Training a lab model to follow a prompt switch: switch clips, and teacher forcing across a switch exactly as
the server switches (the ``block_causal`` recache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_lab.model import PRESETS, build_lab_components
from drift_lab.rollout import chunk_first_frame
from drift_lab.train import RunOptions, train_lab_model
from drift_lab.training_data import build_pool, render_switch_clips
from drift_lab.training_transformer import chunk_texts, denoising_grid, teacher_forced_flows
from drift_lab.world import parse_caption, recoloured, render, sample_scene
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline

MICRO = PRESETS["micro"]
SEEDS = [1, 2, 3, 4, 5, 6, 7, 8]
FRAMES = 33  # 9 latent frames: 3 chunks


def test_a_switch_clip_recolours_some_objects_from_a_chunk_boundary_on() -> None:
    clips = render_switch_clips(MICRO.world, SEEDS, FRAMES, chunks=3)
    assert clips.chunk_captions is not None and clips.frames.shape[:2] == (len(SEEDS), FRAMES)
    switch_chunks = set()
    for index, seed in enumerate(SEEDS):
        scene = sample_scene(seed, MICRO.world)
        captions = clips.chunk_captions[index]
        at = next(chunk for chunk in range(1, 3) if captions[chunk] != captions[0])
        assert captions[:at] == (scene.caption,) * at and len(set(captions[at:])) == 1
        switch_chunks.add(at)
        colours = [look.colour for look in parse_caption(captions[at]).objects]
        assert colours != [shape.colour for shape in scene.shapes]  # at least one object changed colour
        switch = chunk_first_frame(at)
        np.testing.assert_array_equal(clips.frames[index, :switch], render(scene, 0, switch))
        np.testing.assert_array_equal(clips.frames[index, switch:], render(recoloured(scene, colours), switch,
                                                                           FRAMES - switch))  # fmt: skip
    assert switch_chunks == {1, 2}  # both boundaries of a 3-chunk clip occur
    again = render_switch_clips(MICRO.world, SEEDS, FRAMES, chunks=3)
    assert np.array_equal(again.frames, clips.frames) and again.chunk_captions == clips.chunk_captions


def test_recoloured_refuses_what_the_world_cannot_show() -> None:
    scene = sample_scene(3, MICRO.world)
    with pytest.raises(ValueError, match="colours for"):
        recoloured(scene, ["red"] * (len(scene.shapes) + 1))
    with pytest.raises(ValueError, match="distinct"):
        recoloured(scene, ["pink"] * len(scene.shapes))


def test_a_switch_pool_shares_the_plain_clips_latents_before_the_switch() -> None:
    # The causal autoencoder encodes the frames before the switch as it encodes them in the plain clip, and the
    # switch pool is normalised with the plain pool's statistics: those latents are the same, bit for bit.
    components = build_lab_components(MICRO, seed=2)
    encoder = components.prompt_encoder()
    plain = build_pool(components.vae, encoder, MICRO.world, SEEDS, FRAMES, torch.device("cpu"))
    switched = build_pool(components.vae, encoder, MICRO.world, SEEDS, FRAMES, torch.device("cpu"), switches=True)
    assert plain.prompts.shape[:2] == switched.prompts.shape[:2] == (len(SEEDS), 3)
    for index in range(len(SEEDS)):
        at = next(chunk for chunk in range(1, 3) if switched.captions[index][chunk] != switched.captions[index][0])
        torch.testing.assert_close(switched.latents[index, : 3 * at], plain.latents[index, : 3 * at], rtol=0, atol=0)
        assert not torch.equal(switched.latents[index, 3 * at :], plain.latents[index, 3 * at :])
        assert torch.equal(switched.prompts[index, :at], plain.prompts[index, :at])
        assert not torch.equal(switched.prompts[index, at], plain.prompts[index, at])
    joined = plain.joined(switched)
    assert len(joined) == 2 * len(SEEDS) and joined.captions[len(SEEDS)] == switched.captions[0]


@pytest.fixture(scope="module")
def micro() -> tuple[CausalWanTransformer, list[torch.Tensor]]:
    components = build_lab_components(MICRO, seed=2)
    model = CausalWanTransformer(components.transformer, MICRO.text_len, "sdpa")
    encoder = components.prompt_encoder()
    return model, [encoder.encode(sample_scene(seed, MICRO.world).caption) for seed in (3, 4)]


def test_chunk_texts_share_one_context_until_the_prompt_changes(micro) -> None:
    model, (first, second) = micro
    prompts = torch.stack([first, first, second], dim=1)  # [1, chunks, L, D]
    with torch.no_grad():
        texts = chunk_texts(model, prompts)
    assert texts[0] is texts[1] and texts[2] is not texts[1]


@pytest.mark.parametrize("at", [1, 2])
def test_teacher_forcing_across_a_switch_matches_the_servers_recache(micro, at: int) -> None:
    """Each chunk's teacher-forced flow equals Self Forcing's call after the server's prompt switch before
    chunk ``at`` (block_causal recache of the chunks before it), chunk by chunk."""
    model, (first, second) = micro
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(1, 9, 16, 4, 4, generator=generator)
    noise = torch.randn(1, 9, 16, 4, 4, generator=generator)
    t = float(denoising_grid()[2])
    noisy = (1 - t / 1000) * clean + t / 1000 * noise
    before, after = model.encode_text(first), model.encode_text(second)
    with torch.no_grad():
        flows = teacher_forced_flows(model, noisy, torch.full((1, 3), t), clean, torch.zeros(1),
                                     [before] * at + [after] * (3 - at))  # fmt: skip
    pipeline = build_pipeline("self_forcing", model)
    chunks = [Chunk(i, 3 * i, clean[:, 3 * i : 3 * i + 3]) for i in range(3)]
    for chunk in range(3):
        stream = pipeline.open(first, (16, 4, 4), SeededNoise(0), num_blocks=3)
        if chunk:
            stream.prefill(chunks[: min(chunk, at)])
        if chunk >= at:
            stream.recache(after, chunks[:at])
            if chunk > at:
                stream.prefill(chunks[at:chunk])
        expected = stream.block_call(noisy[:, 3 * chunk : 3 * chunk + 3], t)
        torch.testing.assert_close(flows[:, 3 * chunk : 3 * chunk + 3], expected, atol=1e-5, rtol=1e-5)
    # And the switch matters: without it the chunks after it differ.
    with torch.no_grad():
        unswitched = teacher_forced_flows(model, noisy, torch.full((1, 3), t), clean, torch.zeros(1), [before] * 3)
    assert not torch.allclose(unswitched[:, 3 * at :], flows[:, 3 * at :])


def test_a_run_with_switch_clips_trains_on_them_too(tmp_path) -> None:
    preset = MICRO.with_training(switch_clips=4)
    metadata = train_lab_model(preset, tmp_path / "model", RunOptions(seed=1, vae_steps=1, steps=2, log_every=10))
    assert metadata["finished"] and metadata["pool_clips"] == MICRO.training.pool_clips + 4
    assert metadata["preset"]["training"]["switch_clips"] == 4
    with pytest.raises(ValueError, match="switch_clips"):
        MICRO.with_training(switch_clips=-1).training.validate()
