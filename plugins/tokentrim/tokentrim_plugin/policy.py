"""TokenTrim and its random-position control as ``tokentrim_server`` cache policies.

Both keep one :class:`DriftDetector` per session (one policy instance per session) and trigger by the
same rule; they differ only in which token positions they prune: TokenTrim the ``S_t`` of largest drift,
``random`` as many positions drawn at random from the session seed (the control experiment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from tokentrim_plugin.detector import DriftDecision, DriftDetector
from tokentrim_server.policies import (
    STAGES,
    AcceptedChunk,
    CacheHandle,
    CachePolicy,
    Candidate,
    Decision,
    Parameter,
    SessionInfo,
    Stage,
)


class TokenTrimPolicy(CachePolicy):
    name = "tokentrim"
    description = (
        "Prune the cached token positions whose latent drifts most when a chunk's drift severity exceeds "
        "the running mean + sensitivity * std, then regenerate the chunk with the same noise."
    )
    parameters = (
        Parameter("prune_ratio", float, 0.1, "p: fraction of a frame's tokens pruned on trigger, ceil(p N).",
                  minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True),
        Parameter("sensitivity", float, 2.0, "lambda: trigger when severity > mean + lambda * std.", minimum=0.0),
        Parameter("warmup", int, 2, "Accepted severities needed before the first trigger; 0 acts as 1 (the "
                  "adaptive threshold needs one severity to exist).", minimum=0),
        Parameter("max_regenerations", int, 1, "Regenerations per chunk; the last one is accepted regardless.",
                  minimum=0, maximum=16),
        Parameter("candidate", str, "first_step", "first_step: judge the first denoising step's x0 (cheap "
                  "regeneration); final: judge the finished chunk.", choices=STAGES),
    )  # fmt: skip

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.detector = DriftDetector(self.params["prune_ratio"], self.params["sensitivity"], self.params["warmup"])
        self.session: SessionInfo | None = None

    @property
    def stage(self) -> Stage:
        return self.params["candidate"]

    @property
    def max_regenerations(self) -> int:
        return self.params["max_regenerations"]

    def start(self, session: SessionInfo) -> None:
        self.session = session

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        if candidate.previous is None:  # the session's first chunk: nothing to drift from
            return Decision()
        found = self.detector.observe(candidate.previous, candidate.summary)
        return Decision(found.triggered, self.positions(found, candidate), found.severity, found.threshold)

    def positions(self, found: DriftDecision, candidate: Candidate) -> torch.Tensor:
        """Token positions to prune: ``S_t``."""
        return found.indices

    def accepted(self, chunk: AcceptedChunk) -> None:
        # The accepted candidate's decision was taken against Z_{t-1}, so its severity is the chunk's own.
        if chunk.decision is not None and chunk.decision.severity is not None:
            self.detector.accept(chunk.decision.severity)


class RandomPolicy(TokenTrimPolicy):
    name = "random"
    description = (
        "Control for TokenTrim: the same trigger rule and budget ceil(p N), but the pruned positions are "
        "drawn at random (reproducibly, from the session seed, the chunk and the attempt)."
    )

    def positions(self, found: DriftDecision, candidate: Candidate) -> torch.Tensor:
        seed = self.session.seed if self.session is not None and self.session.seed is not None else 0
        # Keyed like the pipelines' noise, so the draw does not depend on how many draws came before.
        key = f"{seed}:random-policy:{candidate.chunk}:{candidate.attempt}".encode()
        generator = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) >> 1)
        tokens = found.drift.numel()
        return torch.randperm(tokens, generator=generator)[: found.indices.numel()].sort().values
