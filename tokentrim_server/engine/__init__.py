"""The engine side of cache policies: runners that drive a pipeline stream under a policy."""

from tokentrim_server.engine.base import PolicyRunner
from tokentrim_server.engine.chunk_runner import SelfForcingRunner, open_runner
from tokentrim_server.engine.report import ChunkReport, ChunkResult
from tokentrim_server.engine.rolling_runner import RollingForcingRunner

__all__ = [
    "ChunkReport",
    "ChunkResult",
    "PolicyRunner",
    "RollingForcingRunner",
    "SelfForcingRunner",
    "open_runner",
]
