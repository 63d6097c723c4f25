"""The baseline policy: never inspects, never prunes."""

from __future__ import annotations

from tokentrim_server.policies.base import CachePolicy


class NonePolicy(CachePolicy):
    name = "none"
    description = "Baseline: keep every cached token (the plain pipeline)."
