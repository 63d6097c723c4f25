"""The engine side of cache policies and session hooks: runners that drive a pipeline stream."""

from tokentrim_server.engine.base import PolicyRunner
from tokentrim_server.engine.chunk_runner import SelfForcingRunner, open_runner
from tokentrim_server.engine.hooked import HookedSelfForcing, ScratchCache
from tokentrim_server.engine.report import ChunkReport, ChunkResult
from tokentrim_server.engine.rolling_runner import RollingForcingRunner

__all__ = [
    "ChunkReport",
    "ChunkResult",
    "HookedSelfForcing",
    "PolicyRunner",
    "RollingForcingRunner",
    "ScratchCache",
    "SelfForcingRunner",
    "open_runner",
]
