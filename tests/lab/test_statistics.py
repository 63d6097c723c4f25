"""The lab's statistics: paired bootstrap intervals, rates and ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drift_lab.statistics import paired_bootstrap, paired_differences, rate_percent, ratio


def test_bootstrap_interval_covers_the_known_difference_and_excludes_zero():
    rng = np.random.default_rng(1)
    control = rng.normal(10.0, 2.0, size=64)
    arm = control - 0.5 + rng.normal(0.0, 0.3, size=64)  # a true paired difference of -0.5
    interval = paired_bootstrap(paired_differences(dict(enumerate(arm)), dict(enumerate(control))))
    assert interval.n == 64
    assert interval.low < -0.5 < interval.high
    assert interval.high < 0 and interval.excludes_zero
    assert interval.low <= interval.mean <= interval.high


def test_bootstrap_interval_includes_zero_without_a_difference():
    rng = np.random.default_rng(2)
    differences = rng.normal(0.0, 1.0, size=40)
    differences -= differences.mean()  # exactly no mean difference
    interval = paired_bootstrap(differences)
    assert interval.low < 0 < interval.high and not interval.excludes_zero


def test_pairing_removes_between_pair_variation():
    """Large per-seed variation shared by both arms must not widen the interval of the difference."""
    rng = np.random.default_rng(3)
    scene_effect = rng.normal(0.0, 50.0, size=32)
    control = scene_effect + rng.normal(0.0, 0.1, size=32)
    arm = scene_effect + 1.0 + rng.normal(0.0, 0.1, size=32)
    interval = paired_bootstrap(paired_differences(dict(enumerate(arm)), dict(enumerate(control))))
    assert interval.high - interval.low < 0.2 and interval.excludes_zero


def test_bootstrap_is_reproducible_and_depends_on_its_seed():
    differences = np.random.default_rng(4).normal(0.3, 1.0, size=20)
    first, again = paired_bootstrap(differences), paired_bootstrap(differences)
    assert first == again
    other = paired_bootstrap(differences, seed=99)
    assert (other.low, other.high) != (first.low, first.high)


def test_paired_differences_match_keys_and_drop_nan_pairs():
    arm = {("m", 0): 3.0, ("m", 1): math.nan, ("m", 2): 5.0}
    control = {("m", 0): 1.0, ("m", 1): 1.0, ("m", 2): 1.0}
    assert paired_differences(arm, control).tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="unmatched"):
        paired_differences({("m", 0): 1.0}, {("m", 1): 1.0})


def test_bootstrap_edge_cases():
    empty = paired_bootstrap([])
    assert empty.n == 0 and math.isnan(empty.mean) and not empty.excludes_zero
    single = paired_bootstrap([2.0])  # a zero-width interval away from 0, from one pair: not a finding
    assert (single.low, single.high) == (2.0, 2.0) and not single.excludes_zero
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([1.0, math.nan])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1.0], level=1.5)


def test_rates_and_ratios():
    assert rate_percent([True, False, False, False]) == 25.0
    assert rate_percent(np.array([[True, True], [False, True]])) == 75.0
    assert math.isnan(rate_percent([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
