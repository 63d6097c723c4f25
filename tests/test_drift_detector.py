"""TokenTrim's DriftDetector: hand-computed cases and properties on random summaries."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

tokentrim_plugin = pytest.importorskip("tokentrim_plugin", reason="install plugins/tokentrim (make install)")
DriftDetector = tokentrim_plugin.DriftDetector


def _summaries(drifts: list[float], dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair whose per-token drift is exactly ``drifts`` (all of it along the first feature)."""
    previous = torch.arange(len(drifts) * dim, dtype=torch.float32).reshape(len(drifts), dim)
    candidate = previous.clone()
    candidate[:, 0] += torch.tensor(drifts)
    return previous, candidate


def test_hand_computed_decision() -> None:
    detector = DriftDetector(prune_ratio=0.25, sensitivity=1.0, warmup=2)
    previous, candidate = _summaries([1.0, 4.0, 2.0, 0.0, 3.0, 0.5, 0.0, 5.0])
    found = detector.observe(previous, candidate)
    assert torch.allclose(found.drift, torch.tensor([1.0, 4.0, 2.0, 0.0, 3.0, 0.5, 0.0, 5.0]))
    assert found.indices.tolist() == [1, 7]  # ceil(0.25 * 8) = 2 largest: 5.0 and 4.0, ascending
    assert found.severity == pytest.approx(4.5)
    assert found.threshold is None and not found.triggered  # warming up


def test_drift_is_the_l2_norm_over_features() -> None:
    previous = torch.zeros(2, 2)
    candidate = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    found = DriftDetector(prune_ratio=0.5).observe(previous, candidate)
    assert found.drift.tolist() == [5.0, 1.0]
    assert found.indices.tolist() == [0] and found.severity == 5.0


def test_budget_is_ceil_of_p_n_without_float_artefacts() -> None:
    assert DriftDetector(prune_ratio=0.1).budget(30) == 3  # 0.1 * 30 = 3.0000000000000004 in floats
    assert DriftDetector(prune_ratio=0.1).budget(24) == 3  # ceil(2.4)
    assert DriftDetector(prune_ratio=0.1).budget(5) == 1
    assert DriftDetector(prune_ratio=0.5).budget(7) == 4


def test_threshold_is_population_mean_plus_lambda_std() -> None:
    detector = DriftDetector(prune_ratio=0.5, sensitivity=2.0, warmup=2)
    previous, candidate = _summaries([10.0, 0.0])  # severity 10
    detector.accept(2.0)
    assert detector.observe(previous, candidate).threshold is None  # 1 < warmup
    detector.accept(4.0)
    # mean 3, population std 1 -> threshold 5.
    assert detector.mean == 3.0 and detector.std == 1.0
    found = detector.observe(previous, candidate)
    assert found.threshold == 5.0 and found.triggered
    previous, candidate = _summaries([5.0, 0.0])  # exactly at the threshold: no trigger (strict >)
    assert not detector.observe(previous, candidate).triggered


def test_warmup_zero_still_needs_one_severity() -> None:
    detector = DriftDetector(prune_ratio=0.5, sensitivity=0.0, warmup=0)
    previous, candidate = _summaries([1.0, 1.0])
    assert detector.observe(previous, candidate).threshold is None
    detector.accept(0.5)
    found = detector.observe(previous, candidate)
    assert found.threshold == 0.5 and found.triggered


def test_ties_are_broken_by_lowest_index() -> None:
    previous, candidate = _summaries([1.0, 1.0, 1.0, 1.0])
    assert DriftDetector(prune_ratio=0.5).observe(previous, candidate).indices.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prune_ratio": 0.0}, "prune_ratio"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"sensitivity": -0.1}, "sensitivity"),
        ({"sensitivity": math.nan}, "sensitivity"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftDetector(**kwargs)


def test_mismatched_summaries_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        DriftDetector().observe(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="finite"):
        DriftDetector().accept(math.inf)


summaries = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.integers(1, 6),
        st.integers(0, 2**31 - 1),
        st.floats(0.01, 0.99),
        st.floats(0.0, 4.0),
        st.integers(0, 4),
        st.lists(st.floats(0.0, 100.0), max_size=8),
    )
)


@settings(max_examples=60, deadline=None)
@given(summaries)
def test_properties_on_random_summaries(case: tuple) -> None:
    n, d, seed, p, lam, warmup, history = case
    generator = torch.Generator().manual_seed(seed)
    previous, candidate = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    detector = DriftDetector(prune_ratio=p, sensitivity=lam, warmup=warmup)
    for severity in history:
        detector.accept(severity)
    before = (detector.count, detector.mean, detector.std)

    found = detector.observe(previous, candidate)

    assert (detector.count, detector.mean, detector.std) == before  # observe changes nothing
    assert torch.allclose(found.drift, (candidate - previous).norm(dim=1))
    k = math.ceil(round(p * n, 9))
    assert found.indices.numel() == k == detector.budget(n)
    assert found.indices.unique().numel() == k and bool((found.indices.diff() > 0).all())
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[found.indices] = True
    if k < n:
        assert found.drift[chosen].min() >= found.drift[~chosen].max()
    assert found.severity == pytest.approx(float(found.drift[chosen].double().mean()), rel=1e-6)
    if len(history) < max(warmup, 1):
        assert found.threshold is None and not found.triggered
    else:
        expected = statistics.fmean(history) + lam * statistics.pstdev(history)
        assert found.threshold == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert found.triggered == (found.severity > found.threshold)
