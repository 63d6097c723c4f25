"""Session hooks: plugins run at session start that take part in the first chunk's denoising (docs/plugins.md).

The parameter and session types are the ones cache policies use (``tokentrim_server.plugin_api``), re-exported
here so a hook needs nothing from ``tokentrim_server.policies``.
"""

from tokentrim_server.hooks.base import DenoisingStep, HookReport, Predictor, SessionHook
from tokentrim_server.hooks.registry import (
    ENTRY_POINT_GROUP,
    HookNotFoundError,
    create_hook,
    describe_hooks,
    hook_names,
    load_hook,
)
from tokentrim_server.plugin_api import Parameter, ParameterError, SessionInfo, validate_params

__all__ = [
    "ENTRY_POINT_GROUP",
    "DenoisingStep",
    "HookNotFoundError",
    "HookReport",
    "Parameter",
    "ParameterError",
    "Predictor",
    "SessionHook",
    "SessionInfo",
    "create_hook",
    "describe_hooks",
    "hook_names",
    "load_hook",
    "validate_params",
]
