"""Injected corruption: exact at zero dose, confined to its region and target, and the oracle prunes exactly it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from drift_lab.injection import (
    InjectedOracle,
    Injection,
    RecordingPolicy,
    Region,
    corruption_source,
    install,
    roc_auc,
    token_grid,
)
from drift_lab.injection_suite import ARMS, InjectionConfig, arm_policy, run_injection_suite, select
from drift_lab.rollout import generate_with, load_lab_model, make_truth
from lab.lab_support import random_lab_folder
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.policies import create_policy

CHUNK = 3  # the injected chunk: generated, after one prefilled true chunk
REGION = Region(0, 1, 1, 1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_lab_model(random_lab_folder(tmp_path_factory.mktemp("lab")))


@pytest.fixture(scope="module")
def truth(model):
    return make_truth(model, 11, 1)


def grid_of(model, truth):
    return token_grid(truth.latents.shape[-2:], model.bundle.transformer.patch_size)


def rollout(model, truth, injection=None, policy=None, chunks=5):
    source = None if injection is None else corruption_source(model, truth, injection)

    def setup(stream):
        if injection is not None:
            install(stream, injection, source)

    return generate_with(model, "self_forcing", "arm", policy or create_policy("none"), truth, 1, chunks, setup)


@pytest.mark.parametrize("target", ["cache", "emitted"])
@pytest.mark.parametrize("kind", ["patch", "noise"])
def test_a_zero_dose_reproduces_the_uncorrupted_run_bit_for_bit(model, truth, target, kind):
    clean = rollout(model, truth)
    zero = rollout(model, truth, Injection(target, kind, CHUNK, REGION, 0.0))
    full = rollout(model, truth, Injection(target, kind, CHUNK, REGION, 1.0))
    assert torch.equal(zero.latents, clean.latents)
    assert not torch.equal(full.latents, clean.latents)  # the same code path does corrupt at a non-zero dose


def _chunk(latents, index):
    start = (index - 1) * 3  # generated chunk `index` after one prefilled chunk
    return latents[:, start : start + 3]


def test_cache_corruption_leaves_the_emitted_chunk_clean_and_shows_later(model, truth):
    clean = rollout(model, truth)
    corrupted = rollout(model, truth, Injection("cache", "patch", CHUNK, REGION, 1.0))
    for index in range(1, CHUNK + 1):
        assert torch.equal(_chunk(corrupted.latents, index), _chunk(clean.latents, index))
    assert not torch.equal(_chunk(corrupted.latents, CHUNK + 1), _chunk(clean.latents, CHUNK + 1))


def test_emitted_corruption_changes_only_the_region_of_its_chunk(model, truth):
    clean = rollout(model, truth)
    corrupted = rollout(model, truth, Injection("emitted", "noise", CHUNK, REGION, 0.5))
    changed = (_chunk(corrupted.latents, CHUNK) != _chunk(clean.latents, CHUNK)).any(dim=(0, 1, 2))
    _, ph, pw = model.bundle.transformer.patch_size
    expected = torch.zeros_like(changed)
    expected[REGION.top * ph : (REGION.top + 1) * ph, REGION.left * pw : (REGION.left + 1) * pw] = True
    assert torch.equal(changed, expected)


def test_cache_corruption_touches_only_the_region_tokens_of_its_chunk(model, truth):
    """Right after the injected commit, the cache differs from the clean one exactly at the region's tokens."""
    injection = Injection("cache", "noise", CHUNK, REGION, 1.0)
    source = corruption_source(model, truth, injection)
    caches = []
    for inject in (False, True):
        pipeline = build_pipeline("self_forcing", model.bundle.transformer, model.options("self_forcing"))
        prompt = model.bundle.prompt_encoder.encode(truth.scene.caption)
        stream = pipeline.open(prompt, model.bundle.latent_shape(32, 32), SeededNoise(truth.seed), num_blocks=6)
        stream.prefill([truth.chunk(0)])
        if inject:
            install(stream, injection, source)
        for _ in range(CHUNK):
            next(stream)
        caches.append(stream.cache)
    clean, corrupted = caches
    tokens_per_frame = clean.tokens_per_frame
    chunk_start = clean.length - 3 * tokens_per_frame
    grid = grid_of(model, truth)
    expected = {chunk_start + frame * tokens_per_frame + int(p) for frame in range(3) for p in REGION.positions(grid)}
    for layer in range(clean.num_layers):
        keys_clean, values_clean = clean.committed(layer)
        keys_bad, values_bad = corrupted.committed(layer)
        differs = ((keys_clean != keys_bad).flatten(2).any(-1) | (values_clean != values_bad).flatten(2).any(-1))[0]
        assert set(differs.nonzero().flatten().tolist()) == expected


def test_the_oracle_prunes_exactly_the_injected_positions(model, truth):
    injection = Injection("cache", "patch", CHUNK, REGION, 1.0)
    grid = grid_of(model, truth)
    recorder = RecordingPolicy(InjectedOracle(injection, grid))
    assert recorder.name == "injected_oracle"  # the runner's messages name the recorded policy
    generated = rollout(model, truth, injection, recorder)
    triggered = [i for i in recorder.inspections if i.decision.triggered]
    assert [(i.chunk, i.attempt) for i in triggered] == [(CHUNK + 1, 0)]
    assert torch.equal(triggered[0].decision.positions, REGION.positions(grid))
    record = next(r for r in generated.chunks if r.index == CHUNK + 1)
    assert record.triggered and record.regenerations == 1
    # One position per cached non-sink frame (the window keeps the 6 frames before the block: no sink).
    assert record.tokens_removed == 6


def test_injections_are_checked(model, truth):
    with pytest.raises(ValueError, match="dose must be in"):
        Injection("cache", "patch", CHUNK, REGION, 1.5)
    with pytest.raises(ValueError, match="target must be one of"):
        Injection("kv", "patch", CHUNK, REGION, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit"):
        Region(1, 1, 1, 2).positions((2, 2))
    pipeline = build_pipeline("rolling_forcing", model.bundle.transformer, model.options("rolling_forcing"))
    prompt = model.bundle.prompt_encoder.encode("x")
    stream = pipeline.open(prompt, model.bundle.latent_shape(32, 32), SeededNoise(0), 4)
    with pytest.raises(ValueError, match="Self Forcing"):
        install(stream, Injection("cache", "noise", CHUNK, REGION, 1.0), torch.zeros(1))


def test_roc_auc_matches_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=40), 1)  # rounded: ties occur
    labels = rng.random(40) < 0.3
    expected = stats.mannwhitneyu(scores[labels], scores[~labels]).statistic / (labels.sum() * (~labels).sum())
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert np.isnan(roc_auc(scores, np.zeros(40, dtype=bool)))


def test_the_suite_runs_end_to_end_and_keeps_its_controls_exact(model, tmp_path):
    folder = random_lab_folder(tmp_path)
    config = InjectionConfig(models=(str(folder),), seeds=1, doses=(0.0, 1.0), scenarios=("cache_patch",),
                             chunk=CHUNK, after=2, region=REGION, decode_seeds=1)  # fmt: skip
    result = run_injection_suite(config, progress=lambda line: None)
    assert {r.arm for r in result.rollouts} == set(ARMS)
    assert all(r.equals_twin for r in select(result, "cache_patch", "none", 0.0))
    assert not any(r.equals_twin for r in select(result, "cache_patch", "none", 1.0))
    regenerate = {r.dose: r.digest for r in select(result, "cache_patch", "regenerate")}
    assert regenerate == {r.dose: r.digest for r in select(result, "cache_patch", "none")}
    oracle = select(result, "cache_patch", "injected_oracle", 1.0)[0]
    assert oracle.pruned == REGION.positions(result.grids[folder.name]).tolist()
    assert oracle.pixel_psnr is not None and len(oracle.pixel_psnr) == len(oracle.chunks)
    assert callable(arm_policy("tokentrim"))
