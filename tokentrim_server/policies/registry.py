"""Finding cache policies through the ``tokentrim_server.cache_policies`` entry-point group.

The core registers its own ``none`` policy through the same group, so a server treats built-in and
third-party policies alike and never imports a plugin by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tokentrim_server.policies.base import CachePolicy

ENTRY_POINT_GROUP = "tokentrim_server.cache_policies"


class PolicyNotFoundError(LookupError):
    """No (or more than one) installed policy has the requested name."""


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, []).append(entry)
    return found


def policy_names() -> list[str]:
    """Names of every installed policy, sorted."""
    return sorted(_entry_points())


def load_policy(name: str) -> type[CachePolicy]:
    """The policy class registered under ``name``."""
    candidates = _entry_points().get(name, [])
    if not candidates:
        raise PolicyNotFoundError(f"no cache policy {name!r}; installed: {', '.join(policy_names()) or 'none'}")
    # Two distributions may both sit on sys.path (an editable install and a copy): identical targets are fine.
    targets = {entry.value for entry in candidates}
    if len(targets) > 1:
        raise PolicyNotFoundError(f"cache policy {name!r} is registered more than once: {', '.join(sorted(targets))}")
    policy = candidates[0].load()
    if not (isinstance(policy, type) and issubclass(policy, CachePolicy)):
        raise TypeError(f"entry point {name!r} = {candidates[0].value} is not a CachePolicy subclass")
    return policy


def create_policy(name: str, params: Mapping[str, Any] | None = None) -> CachePolicy:
    """A fresh, configured policy instance for one session."""
    return load_policy(name)(params)


def describe_policies() -> list[dict[str, Any]]:
    """Every installed policy's schema, for a server to list."""
    return [load_policy(name).schema() for name in policy_names()]
