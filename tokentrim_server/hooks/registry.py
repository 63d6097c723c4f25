"""Finding session hooks through the ``tokentrim_server.session_hooks`` entry-point group.

Like cache policies, hooks are only ever found by name through installed distributions' entry points: the
core imports no hook by name (FlowMo lives in ``plugins/flowmo``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokentrim_server.hooks.base import SessionHook
from tokentrim_server.plugin_registry import PluginRegistry

ENTRY_POINT_GROUP = "tokentrim_server.session_hooks"


class HookNotFoundError(LookupError):
    """No (or more than one) installed session hook has the requested name."""


REGISTRY = PluginRegistry(ENTRY_POINT_GROUP, SessionHook, "session hook", HookNotFoundError)


def hook_names() -> list[str]:
    """Names of every installed session hook, sorted."""
    return REGISTRY.names()


def load_hook(name: str) -> type[SessionHook]:
    """The hook class registered under ``name``."""
    return REGISTRY.load(name)


def create_hook(name: str, params: Mapping[str, Any] | None = None) -> SessionHook:
    """A fresh, configured hook instance for one session (``ParameterError`` on bad ``params``)."""
    return REGISTRY.create(name, params)


def describe_hooks() -> list[dict[str, Any]]:
    """Every installed hook's schema, for a server to list."""
    return REGISTRY.describe()
