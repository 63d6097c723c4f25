"""What the engine reports for every chunk it runs under a cache policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tokentrim_server.hooks.base import HookReport
from tokentrim_server.pipelines.base import Chunk


@dataclass(frozen=True)
class ChunkReport:
    """One chunk's policy activity.

    ``severity``/``threshold`` are the accepted candidate's (``None`` when not inspected or, for threshold,
    while the policy warms up). ``triggered``: some candidate of this chunk triggered. Cache sizes are the
    committed context: ``*_before`` when the chunk's first model call starts (after the pipeline's own
    eviction), ``*_after`` after the chunk's last removal (equal to before when nothing was removed); the
    chunk's own tokens are never counted. ``decision_seconds`` is the
    summaries plus ``inspect``; ``policy_seconds`` adds removals and the policy's other calls; ``chunk_seconds``
    is the whole chunk, model calls and regenerations included (Rolling Forcing: every window run for it; the
    first chunk's includes its session hooks' ``adjust`` time).
    ``hooks``: every session hook's report on the session's first chunk, empty on every later one.
    """

    chunk: int
    stage: str | None
    severity: float | None
    threshold: float | None
    triggered: bool
    regenerations: int
    tokens_removed: int
    cache_tokens_before: int
    cache_tokens_after: int
    cache_bytes_before: int
    cache_bytes_after: int
    decision_seconds: float
    policy_seconds: float
    chunk_seconds: float
    hooks: tuple[HookReport, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``hooks`` becomes a list of ``{name, seconds, values}``."""
        report = asdict(self)
        report["hooks"] = list(report["hooks"])
        return report


@dataclass(frozen=True)
class ChunkResult:
    """A finished chunk and its report."""

    chunk: Chunk
    report: ChunkReport
