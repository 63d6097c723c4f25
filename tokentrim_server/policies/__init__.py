"""Cache policies: plugins that inspect chunks and prune a session's KV cache (see docs/plugins.md)."""

from tokentrim_server.plugin_api import Parameter, ParameterError, SessionInfo, validate_params
from tokentrim_server.policies.base import STAGES, AcceptedChunk, CachePolicy, Candidate, Decision, Stage
from tokentrim_server.policies.handle import CacheHandle
from tokentrim_server.policies.registry import (
    ENTRY_POINT_GROUP,
    PolicyNotFoundError,
    create_policy,
    describe_policies,
    load_policy,
    policy_names,
)
from tokentrim_server.policies.summary import latent_summary

__all__ = [
    "ENTRY_POINT_GROUP",
    "STAGES",
    "AcceptedChunk",
    "CacheHandle",
    "CachePolicy",
    "Candidate",
    "Decision",
    "Parameter",
    "ParameterError",
    "PolicyNotFoundError",
    "SessionInfo",
    "Stage",
    "create_policy",
    "describe_policies",
    "latent_summary",
    "load_policy",
    "policy_names",
    "validate_params",
]
