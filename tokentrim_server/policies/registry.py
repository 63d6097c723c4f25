"""Finding cache policies through the ``tokentrim_server.cache_policies`` entry-point group.

The core registers its own ``none`` policy through the same group, so a server treats built-in and
third-party policies alike and never imports a plugin by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokentrim_server.plugin_registry import PluginRegistry
from tokentrim_server.policies.base import CachePolicy

ENTRY_POINT_GROUP = "tokentrim_server.cache_policies"


class PolicyNotFoundError(LookupError):
    """No (or more than one) installed policy has the requested name."""


REGISTRY = PluginRegistry(ENTRY_POINT_GROUP, CachePolicy, "cache policy", PolicyNotFoundError)


def policy_names() -> list[str]:
    """Names of every installed policy, sorted."""
    return REGISTRY.names()


def load_policy(name: str) -> type[CachePolicy]:
    """The policy class registered under ``name``."""
    return REGISTRY.load(name)


def create_policy(name: str, params: Mapping[str, Any] | None = None) -> CachePolicy:
    """A fresh, configured policy instance for one session."""
    return REGISTRY.create(name, params)


def describe_policies() -> list[dict[str, Any]]:
    """Every installed policy's schema, for a server to list."""
    return REGISTRY.describe()
