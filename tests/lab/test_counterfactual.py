"""The true-cache counterfactual: the drift onset, and the cache rewrite it makes there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_lab.experiment import ONSET_SURVIVAL, drift_onset
from drift_lab.measure import FrameMetrics
from drift_lab.rollout import (
    ChunkRecord,
    Generated,
    Rollout,
    chunk_first_frame,
    generate_with,
    load_lab_model,
    make_truth,
    rewrite_cache_from_truth,
)
from lab.lab_support import random_lab_folder
from tokentrim_server.policies import create_policy


def _rollout_with_survival(per_chunk: list[float]) -> Rollout:
    """A rollout after one prefilled chunk whose generated chunks 1.. have the given mean survival."""
    chunks = list(range(1, len(per_chunk) + 1))
    start = chunk_first_frame(1)
    frames = chunk_first_frame(chunks[-1] + 1) - start
    survival = np.concatenate([np.full(chunk_first_frame(c + 1) - chunk_first_frame(c), value)
                               for c, value in zip(chunks, per_chunk, strict=True)])  # fmt: skip
    nan = np.full(frames, np.nan)
    metrics = FrameMetrics(nan, survival, nan, nan, nan, nan, nan, nan)
    records = [ChunkRecord(c, False, 0, 0, 0.0) for c in chunks]
    generated = Generated("none", "self_forcing", 0, 1, torch.zeros(1), records)
    return Rollout(generated, start, np.zeros((frames, 1, 1, 3), dtype=np.uint8), metrics)


def test_the_onset_is_the_first_chunk_after_the_first_whose_survival_falls():
    low = ONSET_SURVIVAL - 0.1
    assert drift_onset(_rollout_with_survival([1.0, 1.0, low, low]), prefill=1) == 3
    # The first generated chunk attends to true chunks only: it cannot be rewritten before, so it is skipped.
    assert drift_onset(_rollout_with_survival([low, 1.0, 1.0, low]), prefill=1) == 4
    assert drift_onset(_rollout_with_survival([1.0, 1.0, 1.0]), prefill=1) is None


@pytest.mark.parametrize("pipeline", ["self_forcing", "rolling_forcing"])
def test_the_rewrite_changes_only_what_follows_the_onset(tmp_path, pipeline):
    model = load_lab_model(random_lab_folder(tmp_path))
    truth = make_truth(model, 3, 5)
    plain = generate_with(model, pipeline, "none", create_policy("none"), truth, 1, 4)
    rewritten = generate_with(model, pipeline, "true_cache", create_policy("none"), truth, 1, 4,
                              after_chunk=rewrite_cache_from_truth(truth, 3))  # fmt: skip
    before = slice(0, 2 * 3)  # generated chunks 1 and 2
    assert torch.equal(plain.latents[:, before], rewritten.latents[:, before])
    assert not torch.equal(plain.latents[:, 6:], rewritten.latents[:, 6:])
