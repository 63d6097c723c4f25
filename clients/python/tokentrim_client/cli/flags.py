"""Parsers of the CLI's structured flag values; each raises ArgumentTypeError, which argparse reports with the
flag's name ("argument --switch: ...")."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

N = TypeVar("N", int, float)


def key_json(text: str) -> tuple[str, Any]:
    """``KEY=JSON``, e.g. ``threshold=0.5``, ``mode="fast"`` (shell: ``'mode="fast"'``), ``sizes=[1,2]``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the value is not JSON ({error.msg}); strings need quotes, e.g. {key.strip()}='\"text\"'"
        ) from None


def hook_key_json(text: str) -> tuple[str, str, Any]:
    """``HOOK.KEY=JSON``: one parameter of the session hook HOOK."""
    target, sep, _ = text.partition("=")
    hook, dot, key = target.partition(".")
    if not sep or not dot or not hook.strip() or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=JSON, got {text!r}")
    _, value = key_json(text[len(hook) + 1 :])
    return hook.strip(), key.strip(), value


def switch(text: str) -> tuple[int, str]:
    """``CHUNK:PROMPT``: CHUNK is a whole number >= 1 and PROMPT is not empty."""
    chunk, sep, prompt = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected CHUNK:PROMPT, got {text!r}")
    try:
        index = int(chunk)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: CHUNK must be a whole number, got {chunk!r}") from None
    if index < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: CHUNK must be >= 1 (chunk 0 uses --prompt)")
    if not prompt.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: PROMPT is empty")
    return index, prompt


def positive_float(text: str) -> float:
    return _number(text, float, "a number", lambda value: value > 0, "> 0")


def non_negative_int(text: str) -> int:
    return _number(text, int, "a whole number", lambda value: value >= 0, ">= 0")


def _number(text: str, convert: Callable[[str], N], noun: str, valid: Callable[[N], bool], requirement: str) -> N:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value


def collect_params(pairs: Iterable[tuple[str, Any]], flag: str) -> dict[str, Any]:
    """KEY=JSON pairs as a dict; a key given twice is an error naming ``flag``."""
    params: dict[str, Any] = {}
    for key, value in pairs:
        if key in params:
            raise ValueError(f"{flag}: {key!r} is given twice")
        params[key] = value
    return params


def collect_hooks(names: Iterable[str], params: Iterable[tuple[str, str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``--hook`` names in order with their ``--hook-param`` values; a parameter of an unnamed hook is an error."""
    unique_names = collect_params(((name, None) for name in names), "--hook")
    grouped: dict[str, list[tuple[str, Any]]] = {name: [] for name in unique_names}
    for hook, key, value in params:
        if hook not in grouped:
            raise ValueError(f"--hook-param: {hook}.{key} names a hook not given with --hook")
        grouped[hook].append((key, value))
    return [(name, collect_params(pairs, f"--hook-param {name}")) for name, pairs in grouped.items()]


def collect_switches(switches: Iterable[tuple[int, str]], chunks: int) -> dict[int, str]:
    """``--switch`` values by chunk; two at one chunk, or one past ``--chunks``, is an error naming the flag."""
    by_chunk: dict[int, str] = {}
    for index, prompt in switches:
        if index in by_chunk:
            raise ValueError(f"--switch: chunk {index} is given twice")
        if chunks and index >= chunks:
            raise ValueError(f"--switch: chunk {index} is past the last chunk ({chunks - 1}, from --chunks {chunks})")
        by_chunk[index] = prompt
    return by_chunk
