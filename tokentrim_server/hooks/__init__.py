"""Session hooks: plugins run at session start that take part in the first chunk's denoising (docs/plugins.md)."""

from tokentrim_server.hooks.base import DenoisingStep, HookReport, Predictor, SessionHook
from tokentrim_server.hooks.registry import (
    ENTRY_POINT_GROUP,
    HookNotFoundError,
    create_hook,
    describe_hooks,
    hook_names,
    load_hook,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "DenoisingStep",
    "HookNotFoundError",
    "HookReport",
    "Predictor",
    "SessionHook",
    "create_hook",
    "describe_hooks",
    "hook_names",
    "load_hook",
]
