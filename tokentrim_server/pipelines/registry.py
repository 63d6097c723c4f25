"""Pipelines by name: what the engine, the server, the CLI, the lab and the benchmarks choose from.

Adding a pipeline: write its options (a ``PipelineOptions`` subclass with its cache rules), its stream (a
``StreamBase`` subclass offering ``begin_chunk``) and its spec (a ``PipelineBase`` subclass naming both), then
list the spec here. Nothing else in the server changes (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.base import PipelineBase
from tokentrim_server.pipelines.longlive import LongLivePipeline
from tokentrim_server.pipelines.rolling_forcing import RollingForcingPipeline
from tokentrim_server.pipelines.self_forcing import SelfForcingPipeline

PIPELINES: dict[str, type[PipelineBase]] = {
    spec.name: spec for spec in (SelfForcingPipeline, RollingForcingPipeline, LongLivePipeline)
}
_SHOWN_INPUT_CHARS = 40  # an echoed value is cut here: a 300-digit number helps nobody
_MUST = re.compile(r"^(Input|Tuple|List) should ")  # pydantic's "Input should be ..." as "must be ..."


def pipeline_options(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The options of pipeline ``name`` with ``overrides`` (JSON values) applied, type- and range-checked.

    Raises ``ValueError`` naming the option: unknown, of the wrong type (booleans are not integers, 2.5 is not
    an integer), not finite, or out of its range. Constraints between options are left to ``validate()``.
    """
    if name not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}; got {name!r}")
    options_cls = PIPELINES[name].options_class
    fields = {f.name for f in dataclasses.fields(options_cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; known: {sorted(fields)}")
    try:
        # JSON mode: strict types as a client's JSON carries them (a list for a tuple, an int for a float).
        return _adapter(options_cls).validate_json(json.dumps(overrides, allow_nan=True))
    except (TypeError, ValueError) as error:  # ValidationError, or a value JSON cannot carry
        raise ValueError(_describe(error)) from None


def options_schema(name: str) -> dict[str, Any]:
    """JSON Schema of pipeline ``name``'s options: each option's type, range, default and description."""
    return _adapter(PIPELINES[name].options_class).json_schema()


def build_pipeline(name: str, model: CausalWanTransformer, overrides: Mapping[str, Any] | None = None) -> PipelineBase:
    options = pipeline_options(name, overrides)  # first: it names an unknown pipeline
    return PIPELINES[name](model, options)


@functools.cache
def _adapter(options_cls: type) -> TypeAdapter:
    return TypeAdapter(options_cls)


def _describe(error: Exception) -> str:
    if not isinstance(error, ValidationError):
        return f"options must be JSON values: {error}"
    problems: dict[str, str] = {}
    for item in error.errors():
        option = str(item["loc"][0])
        if option in problems:  # the first problem of an option; the rest follow from it
            continue
        where = option + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"][1:])
        shown = json.dumps(item["input"]) if _is_json(item["input"]) else repr(item["input"])
        if len(shown) > _SHOWN_INPUT_CHARS:
            shown = shown[:_SHOWN_INPUT_CHARS] + "..."
        problems[option] = f"{where} {_MUST.sub('must ', item['msg'], count=1)}; got {shown}"
    return "; ".join(problems.values())


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
