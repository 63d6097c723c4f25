"""The engine: runners that drive a pipeline stream under a cache policy and hooks, and the device session."""

from tokentrim_server.engine.hooks import HookSteps
from tokentrim_server.engine.report import ChunkReport, ChunkResult
from tokentrim_server.engine.runner import PolicyRunner, open_runner

__all__ = [
    "ChunkReport",
    "ChunkResult",
    "HookSteps",
    "PolicyRunner",
    "open_runner",
]
