"""Validating a client's session messages: every field checked, every error naming the field.

:func:`plan_session` turns a ``StartSession`` into a :class:`SessionPlan` plus the KV-cache bytes the
session will reserve, or raises :class:`RequestError`, which the service returns as INVALID_ARGUMENT.
Nothing a client sends is used as a path or evaluated: plugin names are looked up among installed entry
points, options among the pipeline's dataclass fields.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any

from google.protobuf.struct_pb2 import Struct, Value
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_server.engine.generation import SessionPlan
from tokentrim_server.engine.sizing import session_cache_bytes
from tokentrim_server.hooks import HookNotFoundError, SessionHook, create_hook
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.pipelines.options import PipelineOptions
from tokentrim_server.pipelines.registry import PIPELINES, pipeline_options
from tokentrim_server.policies import ParameterError, PolicyNotFoundError, create_policy
from tokentrim_server.policies.base import CachePolicy
from tokentrim_server.server.config import ServerConfig

ENCODINGS = {
    pb.ENCODING_UNSPECIFIED: "jpeg",
    pb.ENCODING_JPEG: "jpeg",
    pb.ENCODING_RAW_RGB: "raw_rgb",
    pb.ENCODING_LATENTS: "latents",
}
MAX_SEED = 2**63 - 1  # seeds travel as uint64 but are hashed as signed 64-bit integers by the noise source
MAX_EXACT_INTEGER = 2**53  # Struct numbers are doubles: integers beyond this are not exact, so stay floats


class RequestError(ValueError):
    """An invalid request field; ``str()`` reads ``field: what is wrong``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class PlannedSession:
    """A validated session and what it delivers."""

    plan: SessionPlan
    cache_bytes: int
    encoding: str  # jpeg, raw_rgb or latents
    jpeg_quality: int
    credits: int
    max_chunks: int | None  # where an unbounded session ends (None: it runs until stopped)


class RequestValidator:
    """Checks requests against the server's limits and the loaded model."""

    def __init__(
        self, config: ServerConfig, bundle: ModelBundle, default_size: tuple[int, int], cache_budget_bytes: int
    ) -> None:
        self.config = config
        self.bundle = bundle
        self.default_height, self.default_width = default_size
        self.cache_budget_bytes = cache_budget_bytes
        self.size_multiple = bundle.spatial_scale * bundle.transformer.patch_size[1]

    def default_options(self, pipeline: str) -> dict[str, Any]:
        """The server's defaults for ``pipeline``'s options (what a session starts from): the pipeline's serving
        defaults, then the server configuration's."""
        return {**PIPELINES[pipeline].serving_defaults, **self.config.pipeline_option_overrides().get(pipeline, {})}

    def prompt(self, text: str, field: str = "prompt") -> str:
        if not text.strip():
            raise RequestError(field, "must not be empty")
        if len(text) > self.config.max_prompt_chars:
            raise RequestError(field, f"has {len(text)} characters; at most {self.config.max_prompt_chars} are allowed")
        return text


    def plan(self, start: pb.StartSession) -> PlannedSession:
        prompt = self.prompt(start.prompt)
        seed = start.seed if start.HasField("seed") else secrets.randbelow(MAX_SEED)
        if seed > MAX_SEED:
            raise RequestError("seed", f"must be at most {MAX_SEED}; got {seed}")
        pipeline = start.pipeline or self.config.default_pipeline
        if pipeline not in PIPELINES:
            raise RequestError("pipeline", f"must be one of {', '.join(PIPELINES)}; got {pipeline!r}")
        options = self._options(pipeline, start)
        max_chunks = self.config.max_chunks or None  # positions have no end (models/rope.py): only the operator's
        if max_chunks is not None and start.chunks > max_chunks:
            raise RequestError("chunks", f"must be at most {max_chunks} (0: unbounded); got {start.chunks}")
        chunks = start.chunks or None
        height = self._size("height", start.height, self.default_height, self.config.max_height)
        width = self._size("width", start.width, self.default_width, self.config.max_width)
        latent_shape = self.bundle.latent_shape(height, width)
        try:
            cache_bytes = session_cache_bytes(self.bundle.transformer, options, latent_shape, chunks)
        except ValueError as error:
            raise RequestError("pipeline_options", str(error)) from None
        if cache_bytes > self.cache_budget_bytes:
            raise RequestError(
                "height/width/chunks/pipeline_options",
                f"the session needs {cache_bytes} bytes of KV cache, more than the server's whole budget of "
                f"{self.cache_budget_bytes}; ask for a smaller frame, fewer chunks or a shorter cache window",
            )
        policy = self._policy(start)
        hooks = self._hooks(start)
        encoding = ENCODINGS.get(start.output.encoding)
        if encoding is None:
            raise RequestError("output.encoding", f"must be one of {', '.join(pb.Encoding.keys())}")
        quality = start.output.jpeg_quality or self.config.jpeg_quality
        if not 1 <= quality <= 100:
            raise RequestError("output.jpeg_quality", f"must be in [1, 100] (0: the default); got {quality}")
        if start.initial_credits > self.config.max_credits:
            raise RequestError(
                "initial_credits", f"must be at most {self.config.max_credits} (0: {self.config.default_credits})"
            )
        plan = SessionPlan(
            prompt=prompt, seed=seed, pipeline=pipeline, options=options, chunks=chunks, height=height,
            width=width, policy=policy, hooks=tuple(hooks), decode=encoding != "latents",
        )
        credits = start.initial_credits or self.config.default_credits
        return PlannedSession(plan, cache_bytes, encoding, quality, credits, max_chunks)

    # ------------------------------------------------------------------ fields
    def _options(self, pipeline: str, start: pb.StartSession) -> PipelineOptions:
        overrides = {**self.default_options(pipeline), **struct_to_dict(start.pipeline_options)}
        try:
            options = pipeline_options(pipeline, overrides)
            options.validate()
        except (TypeError, ValueError) as error:
            raise RequestError("pipeline_options", str(error)) from None
        steps = len(options.denoising_steps)
        if steps > self.config.max_denoising_steps:
            raise RequestError(
                "pipeline_options",
                f"denoising_steps has {steps} steps; this server allows at most {self.config.max_denoising_steps} "
                "per chunk (limits.max_denoising_steps): every session shares the device",
            )
        return options

    def _size(self, field: str, value: int, default: int, maximum: int) -> int:
        value = value or default
        if value > maximum or value % self.size_multiple:
            raise RequestError(
                field, f"must be a multiple of {self.size_multiple} and at most {maximum} (0: {default}); got {value}"
            )
        return value

    def _policy(self, start: pb.StartSession) -> CachePolicy:
        name = start.cache_policy.name or self.config.default_policy
        try:
            return create_policy(name, struct_to_dict(start.cache_policy.params))
        except PolicyNotFoundError as error:
            raise RequestError("cache_policy.name", str(error)) from None
        except (ParameterError, TypeError, ValueError) as error:
            raise RequestError("cache_policy.params", str(error)) from None

    def _hooks(self, start: pb.StartSession) -> list[SessionHook]:
        configs = list(start.session_hooks)
        if len(configs) > self.config.max_session_hooks:
            raise RequestError("session_hooks", f"at most {self.config.max_session_hooks} hooks; got {len(configs)}")
        names = [config.name for config in configs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RequestError("session_hooks", f"each hook may appear once; repeated: {', '.join(repeated)}")
        hooks = []
        for index, config in enumerate(configs):
            try:
                hook = create_hook(config.name, struct_to_dict(config.params))
            except HookNotFoundError as error:
                raise RequestError(f"session_hooks[{index}].name", str(error)) from None
            except (ParameterError, TypeError, ValueError) as error:
                raise RequestError(f"session_hooks[{index}].params", str(error)) from None
            if hook.iterations > self.config.max_hook_iterations:
                raise RequestError(
                    f"session_hooks[{index}].params",
                    f"session hook {hook.name!r} would run {hook.iterations} optimisation iterations per step; this "
                    f"server allows at most {self.config.max_hook_iterations} (limits.max_hook_iterations)",
                )
            hooks.append(hook)
        return hooks


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A protobuf Struct as plain Python values.

    Protobuf carries every number as a double: exact integral ones become ints, the rest stay floats, NaN and
    infinity included, so that the option or parameter they were given for reports them by name (protobuf's
    own JSON conversion fails on them without saying where).
    """
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        exact = math.isfinite(number) and number.is_integer() and abs(number) <= MAX_EXACT_INTEGER
        return int(number) if exact else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None  # null_value, or a Value with nothing set


def options_as_dict(options: Any) -> dict[str, Any]:
    """A pipeline options dataclass as JSON-ready values."""
    return {spec.name: _jsonable(getattr(options, spec.name)) for spec in dataclasses.fields(options)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
