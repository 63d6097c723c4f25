"""TokenTrim's drift detector: pure arithmetic on latent summaries, no engine involved.

For summaries ``Z_{t-1}``, ``Z_t`` ``[N, D]`` (one row per token position):

* per-token drift ``d_i = ||Z_t(i) - Z_{t-1}(i)||_2``;
* ``S_t`` = the ``ceil(p N)`` tokens of largest drift; severity ``D_t`` = mean of ``d_i`` over ``S_t``;
* running population mean ``mu`` and std ``sigma`` of accepted severities (Welford, O(1) memory);
* no trigger while fewer than ``max(warmup, 1)`` severities were accepted, else trigger iff
  ``D_t > mu + lambda * sigma``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DriftDecision:
    """What :meth:`DriftDetector.observe` found; ``indices`` are ``S_t``, ascending."""

    drift: torch.Tensor  # [N] per-token d_i
    indices: torch.Tensor  # [ceil(p N)] token indices
    severity: float
    threshold: float | None  # None while warming up
    triggered: bool


class DriftDetector:
    """Severity of a chunk's drift and the running threshold it is tested against."""

    def __init__(self, prune_ratio: float = 0.1, sensitivity: float = 2.0, warmup: int = 2) -> None:
        if not 0 < prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in (0, 1); got {prune_ratio}")
        if not sensitivity >= 0:  # written so that NaN fails too
            raise ValueError(f"sensitivity must be >= 0; got {sensitivity}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0; got {warmup}")
        self.prune_ratio = float(prune_ratio)
        self.sensitivity = float(sensitivity)
        self.warmup = int(warmup)
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the running mean

    # ------------------------------------------------------------------ statistics
    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        """Population standard deviation (divides by the count) of the accepted severities."""
        return math.sqrt(self._m2 / self.count) if self.count else 0.0

    @property
    def threshold(self) -> float | None:
        if self.count < max(self.warmup, 1):
            return None
        return self._mean + self.sensitivity * self.std

    def budget(self, tokens: int) -> int:
        """``ceil(p N)``, at least one token.

        Rounded to 9 decimals first: ``0.1 * 30`` is ``3.0000000000000004`` in binary floating point and
        must give 3 tokens, not 4.
        """
        return min(tokens, max(1, math.ceil(round(self.prune_ratio * tokens, 9))))

    # ------------------------------------------------------------------ decisions
    def observe(self, previous: torch.Tensor, candidate: torch.Tensor) -> DriftDecision:
        """Judge ``candidate`` against ``previous`` (both ``[N, D]``) without changing any state."""
        if previous.dim() != 2 or previous.shape != candidate.shape or previous.shape[0] == 0:
            raise ValueError(
                f"summaries must be two [N, D] tensors of one shape with N > 0; got {tuple(previous.shape)} and "
                f"{tuple(candidate.shape)}"
            )
        drift = torch.linalg.vector_norm(candidate.float() - previous.float(), dim=1)
        # Stable sort: equal drifts are taken lowest index first, so a decision is reproducible.
        order = torch.sort(drift, descending=True, stable=True).indices
        indices = order[: self.budget(drift.numel())].sort().values
        severity = float(drift[indices].double().mean())
        threshold = self.threshold
        triggered = threshold is not None and severity > threshold
        return DriftDecision(drift, indices, severity, threshold, triggered)

    def accept(self, severity: float) -> None:
        """Record an accepted chunk's severity (Welford's update)."""
        severity = float(severity)
        if not math.isfinite(severity):
            raise ValueError(f"severity must be finite; got {severity}")
        self.count += 1
        delta = severity - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (severity - self._mean)
