"""Pipelines by name, with their option classes: what the CLI, the benchmark and the server choose from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.rolling_forcing import RollingForcingOptions, RollingForcingPipeline
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions, SelfForcingPipeline

Pipeline = SelfForcingPipeline | RollingForcingPipeline

PIPELINES: dict[str, tuple[type, type]] = {
    "self_forcing": (SelfForcingPipeline, SelfForcingOptions),
    "rolling_forcing": (RollingForcingPipeline, RollingForcingOptions),
}


def pipeline_options(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The options of pipeline ``name`` with ``overrides`` applied (unknown names are an error)."""
    if name not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}; got {name!r}")
    options_cls = PIPELINES[name][1]
    fields = {f.name for f in dataclasses.fields(options_cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; known: {sorted(fields)}")
    if "denoising_steps" in overrides:
        overrides["denoising_steps"] = tuple(overrides["denoising_steps"])
    return options_cls(**overrides)


def build_pipeline(name: str, model: CausalWanTransformer, overrides: Mapping[str, Any] | None = None) -> Pipeline:
    options = pipeline_options(name, overrides)
    return PIPELINES[name][0](model, options)
