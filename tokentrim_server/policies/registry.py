"""Finding cache policies through the ``tokentrim_server.cache_policies`` entry-point group.

The core registers its own ``none`` policy through the same group, so a server treats built-in and
third-party policies alike and never imports a plugin by name.
"""

from __future__ import annotations

from tokentrim_server.plugin_registry import PluginRegistry
from tokentrim_server.policies.base import CachePolicy

ENTRY_POINT_GROUP = "tokentrim_server.cache_policies"


class PolicyNotFoundError(LookupError):
    """No (or more than one) installed policy has the requested name."""


REGISTRY = PluginRegistry(ENTRY_POINT_GROUP, CachePolicy, "cache policy", PolicyNotFoundError)
# The public functions are the registry's own methods, so policies and hooks share one implementation.
policy_names, load_policy, create_policy, describe_policies = (
    REGISTRY.names,
    REGISTRY.load,
    REGISTRY.create,
    REGISTRY.describe,
)
