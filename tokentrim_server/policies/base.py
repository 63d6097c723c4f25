"""The cache-policy interface: what the engine tells a policy, and what a policy answers.

Lifecycle, one policy instance per session (instances keep their own per-session state, so never share
one between sessions; :func:`tokentrim_server.policies.create_policy` builds a fresh one each time):

1. ``start(session)`` once, before the first chunk.
2. For every candidate of a chunk (only if :attr:`CachePolicy.stage` is not ``None``):
   ``inspect(candidate, cache) -> Decision``. On ``triggered`` the engine removes ``decision.positions``
   from every non-sink cached frame, regenerates the chunk with the same noise and asks again, at most
   :attr:`CachePolicy.max_regenerations` times; then the last candidate is accepted whatever it says.
3. ``accepted(chunk)`` once per chunk, after it is committed to the cache.
4. ``end()`` once, when the session closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from tokentrim_server.plugin_api import Configurable, SessionInfo
from tokentrim_server.policies.handle import CacheHandle

Stage = Literal["first_step", "final"]
STAGES: tuple[Stage, ...] = ("first_step", "final")


@dataclass(frozen=True)
class Candidate:
    """A chunk the engine can still regenerate.

    ``summary`` and ``previous`` are :func:`latent_summary` ``[N, D]`` of this candidate and of the previous
    accepted chunk *at the same stage* (``None`` for the session's first chunk), so like is compared with
    like. ``attempt`` is 0 for the first try and counts regenerations.
    """

    chunk: int
    frame_start: int
    stage: Stage
    attempt: int
    latents: torch.Tensor  # [B, F, C, H, W] x0 prediction at ``stage``
    summary: torch.Tensor
    previous: torch.Tensor | None


@dataclass(frozen=True)
class Decision:
    """A policy's verdict on a candidate; ``positions`` (token indices inside a frame) are pruned on trigger."""

    triggered: bool = False
    positions: torch.Tensor | None = None
    severity: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class AcceptedChunk:
    """A chunk that was committed; ``summary``/``decision`` are those of its accepted candidate, if inspected."""

    chunk: int
    frame_start: int
    latents: torch.Tensor  # final x0
    summary: torch.Tensor | None
    decision: Decision | None
    regenerations: int


class CachePolicy(Configurable):
    """Base class of cache policies; the defaults never inspect and never prune.

    Subclasses set ``name``, ``description`` and ``parameters`` and override the hooks they need. Validated
    parameters are in ``self.params`` (defaults filled in).
    """

    kind: ClassVar[str] = "cache policy"

    @property
    def stage(self) -> Stage | None:
        """Which candidate to inspect; ``None``: never inspect (the engine then skips summaries entirely)."""
        return None

    @property
    def max_regenerations(self) -> int:
        return 0

    def start(self, session: SessionInfo) -> None:
        """Called once before the session's first chunk."""

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        """Judge a candidate; must not change state that only an accepted chunk should change."""
        return Decision()

    def accepted(self, chunk: AcceptedChunk) -> None:
        """Called once per committed chunk."""

    def end(self) -> None:
        """Called once when the session closes."""
