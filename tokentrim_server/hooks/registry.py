"""Finding session hooks through the ``tokentrim_server.session_hooks`` entry-point group.

Like cache policies, hooks are only ever found by name through installed distributions' entry points: the
core imports no hook by name (FlowMo lives in ``plugins/flowmo``).
"""

from __future__ import annotations

from tokentrim_server.hooks.base import SessionHook
from tokentrim_server.plugin_registry import PluginRegistry

ENTRY_POINT_GROUP = "tokentrim_server.session_hooks"


class HookNotFoundError(LookupError):
    """No (or more than one) installed session hook has the requested name."""


REGISTRY = PluginRegistry(ENTRY_POINT_GROUP, SessionHook, "session hook", HookNotFoundError)
# The public functions are the registry's own methods, so hooks and policies share one implementation.
hook_names, load_hook, create_hook, describe_hooks = REGISTRY.names, REGISTRY.load, REGISTRY.create, REGISTRY.describe
