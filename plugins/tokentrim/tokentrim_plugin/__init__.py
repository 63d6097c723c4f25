"""TokenTrim as a cache-policy plugin for tokentrim-server (policies ``tokentrim`` and ``random``)."""

from tokentrim_plugin.detector import DriftDecision, DriftDetector
from tokentrim_plugin.policy import RandomPolicy, TokenTrimPolicy

__all__ = ["DriftDecision", "DriftDetector", "RandomPolicy", "TokenTrimPolicy"]
