"""The lab's statistics: paired bootstrap intervals of arm-minus-control differences, rates and ratios.

Every arm runs on the same scenes and the same noise as the control (``none``), so a rollout of an arm and
the control's rollout on the same model and scene seed form a pair; the interval is of the mean paired
difference, resampling pairs with a fixed bootstrap seed so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 20240917
BOOTSTRAP_RESAMPLES = 10_000
# Fewer pairs than this and a bootstrap interval is an artefact of the resampling (one pair gives a zero-width
# interval that "excludes" 0): no difference is claimed from it.
MIN_PAIRS = 5


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` paired differences and its percentile-bootstrap interval at ``level``."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def enough_pairs(self) -> bool:
        return self.n >= MIN_PAIRS

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero, from at least :data:`MIN_PAIRS` pairs."""
        return bool(self.enough_pairs and (self.low > 0 or self.high < 0))

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def paired_differences(arm: Mapping[Hashable, float], control: Mapping[Hashable, float]) -> np.ndarray:
    """``arm[key] - control[key]`` for every key, in sorted key order; pairs with a NaN side are dropped.

    Both mappings must have the same keys (the pairing is by model and scene seed): a missing partner is an
    error, not a silently smaller sample.
    """
    if set(arm) != set(control):
        missing = sorted(map(str, set(arm) ^ set(control)))
        raise ValueError(f"arm and control must hold the same pairs; unmatched: {', '.join(missing[:5])}")
    keys = sorted(arm, key=str)
    differences = np.array([arm[key] - control[key] for key in keys], dtype=np.float64)
    return differences[np.isfinite(differences)]


def paired_bootstrap(
    differences: Sequence[float] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of the mean of paired ``differences`` (resampling pairs with replacement).

    Empty input gives a NaN interval with ``n = 0``; non-finite differences are an error (drop them first, as
    :func:`paired_differences` does).
    """
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1; got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if not np.all(np.isfinite(values)):
        raise ValueError("differences must be finite (drop NaN pairs before bootstrapping)")
    if values.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size), level)


def rate_percent(flags: Sequence[bool] | np.ndarray) -> float:
    """Percentage of true flags (e.g. chunks that triggered); NaN for no flags."""
    values = np.asarray(flags, dtype=bool).reshape(-1)
    return float(100.0 * values.mean()) if values.size else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is not positive (e.g. wall time vs the control)."""
    return float(numerator / denominator) if denominator > 0 else math.nan
