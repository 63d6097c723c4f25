"""tokentrim-server: real-time streaming text-to-video with pluggable KV-cache policies."""

__version__ = "0.1.0"
