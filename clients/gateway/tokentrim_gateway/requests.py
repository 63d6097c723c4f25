"""The page's control messages, checked for shape only.

Values are the server's to judge (it names the field and the allowed range, and the page shows its message); the
gateway only makes sure each field has a JSON type the start message can carry, so that a malformed message gets
an error naming the field instead of an exception inside the gateway. What travels between gateway and server
(encoding, credit) is the gateway's choice, never the page's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024  # far above any real start message; the server's own limit is checked after


class InputError(ValueError):
    """A page message the gateway cannot forward; ``str()`` names the field."""


@dataclass(frozen=True)
class StartRequest:
    prompt: str
    options: dict[str, Any]  # keyword arguments of tokentrim_client's SessionOptions


def _integer(message: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = message.get(name, default)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise InputError(f"{name}: must be a non-negative integer; got {value!r}")


def _text(message: Mapping[str, Any], name: str) -> str:
    value = message.get(name, "")
    if not isinstance(value, str):
        raise InputError(f"{name}: must be a string; got {value!r}")
    return value


def _object(message: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = message.get(name) or {}
    if not isinstance(value, dict):
        raise InputError(f"{name}: must be an object; got {value!r}")
    return value


def _hooks(message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    hooks = message.get("hooks") or []
    if not isinstance(hooks, list):
        raise InputError(f"hooks: must be a list; got {hooks!r}")
    parsed = []
    for index, hook in enumerate(hooks):
        if not isinstance(hook, dict) or not isinstance(hook.get("name"), str):
            raise InputError(f"hooks[{index}]: must be an object with a name; got {hook!r}")
        parsed.append((hook["name"], _object(hook, "params")))
    return parsed


def parse_start(message: Mapping[str, Any]) -> StartRequest:
    """A ``start`` message as the prompt and session options (``encoding`` and ``credits`` are added by the relay)."""
    seed = message.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64):
        raise InputError(f"seed: must be empty or an integer in [0, 2^64); got {seed!r}")
    options = {
        "chunks": _integer(message, "chunks", 0),
        "seed": seed,
        "pipeline": _text(message, "pipeline"),
        "pipeline_options": _object(message, "pipeline_options"),
        "cache_policy": _text(message, "cache_policy"),
        "policy_params": _object(message, "policy_params"),
        "hooks": _hooks(message),
        "width": _integer(message, "width", 0),
        "height": _integer(message, "height", 0),
    }
    return StartRequest(prompt=_text(message, "prompt"), options=options)


def parse_prompt(message: Mapping[str, Any]) -> str:
    return _text(message, "prompt")
