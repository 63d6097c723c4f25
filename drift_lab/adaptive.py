"""An adaptive pruning budget for TokenTrim (the paper's own future work), evaluated in the lab before shipping.

TokenTrim prunes a fixed ``ceil(p N)`` positions on trigger, whatever the shape of the chunk's drift: one
drifting object and a whole drifting background get the same budget. :class:`AdaptiveBudgetPolicy` keeps
TokenTrim's trigger rule and running statistics (a registry-built ``tokentrim`` inside) and changes only the
budget: on trigger it prunes the positions whose drift is an outlier *of this chunk's drift distribution*,
by a robust z-score ``(d_i - median(d)) / (1.4826 MAD(d))`` above ``z``, at least one (the top one) and at most
``ceil(max_ratio N)`` of them, largest drift first.

It lives in the lab, not in the TokenTrim plugin: it ships there only if the scorecard shows it better than
TokenTrim on something with an interval excluding 0 (see ``docs/drift-lab-scorecard.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from drift_lab.arms import WrappedTokenTrim, token_drift
from tokentrim_server.policies import CacheHandle, Candidate, Decision

# MAD of a normal distribution is 0.6745 sigma: this scales it to a standard deviation.
MAD_TO_STD = 1.4826


def outlier_positions(drift: torch.Tensor, z: float, max_ratio: float) -> torch.Tensor:
    """Positions whose robust z-score of ``drift`` exceeds ``z``: at least the largest, at most ceil(max_ratio N);
    ascending."""
    drift = drift.double()
    median = drift.median()
    spread = MAD_TO_STD * (drift - median).abs().median()
    order = torch.sort(drift, descending=True, stable=True).indices
    # With a zero MAD (half the tokens or more drift identically) only drifts above that level are outliers.
    outliers = (drift - median) / spread > z if spread > 0 else drift > median
    count = int(outliers.sum())
    limit = max(1, math.ceil(round(max_ratio * drift.numel(), 9)))
    return order[: min(max(count, 1), limit)].sort().values


class AdaptiveBudgetPolicy(WrappedTokenTrim):
    name = "tokentrim_adaptive"
    description = "TokenTrim's trigger; on trigger prune the chunk's drift outliers (robust z > z), not a fixed p."

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        settings = dict(params or {})
        self.z = float(settings.pop("z", 3.0))
        self.max_ratio = float(settings.pop("max_ratio", 0.25))
        if not self.z >= 0:
            raise ValueError(f"z must be >= 0; got {self.z}")
        if not 0 < self.max_ratio < 1:
            raise ValueError(f"max_ratio must be in (0, 1); got {self.max_ratio}")
        super().__init__(settings)  # the rest are TokenTrim's own parameters (its trigger and stage)

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        found = self.inner.inspect(candidate, cache)
        drift = token_drift(candidate)
        if found.positions is None or drift is None:
            return found
        return Decision(found.triggered, outlier_positions(drift, self.z, self.max_ratio), found.severity,
                        found.threshold)  # fmt: skip
