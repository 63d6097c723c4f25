"""Python values to the session's request messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from tokentrim.v1 import streaming_pb2 as pb

# Names accepted for ``encoding``; the enum values themselves are accepted too.
ENCODINGS: dict[str, int] = {
    "jpeg": pb.ENCODING_JPEG,
    "raw": pb.ENCODING_RAW_RGB,
    "raw_rgb": pb.ENCODING_RAW_RGB,
    "latents": pb.ENCODING_LATENTS,
}

# A hook given as a bare name, or as (name, params).
HookSpec = str | tuple[str, Mapping[str, Any] | None]


def encoding_value(encoding: str | int) -> int:
    """The ``Encoding`` enum value for a name such as "jpeg" or an enum value."""
    if isinstance(encoding, int):
        if encoding not in pb.Encoding.values():
            raise ValueError(f"unknown encoding value {encoding}")
        return encoding
    try:
        return ENCODINGS[encoding.lower()]
    except KeyError:
        raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}") from None


def to_struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if values:
        struct.update(dict(values))
    return struct


def plugin_config(name: str, params: Mapping[str, Any] | None) -> pb.PluginConfig:
    return pb.PluginConfig(name=name, params=to_struct(params))


def hook_configs(hooks: Iterable[HookSpec]) -> list[pb.PluginConfig]:
    configs = []
    for hook in hooks:
        name, params = (hook, None) if isinstance(hook, str) else hook
        configs.append(plugin_config(name, params))
    return configs


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """Everything a session's start message carries besides the prompt; 0, "" and None take the server's
    defaults. Range checks are the server's job: it names the field and the allowed values."""

    chunks: int = 0  # 0: unbounded, until stop or the server's max_chunks
    seed: int | None = None
    pipeline: str = ""
    pipeline_options: Mapping[str, Any] | None = None
    cache_policy: str | None = None
    policy_params: Mapping[str, Any] | None = None
    hooks: Iterable[HookSpec] = ()  # hook names or (name, params) pairs, run in this order
    encoding: str | int = "jpeg"  # "jpeg", "raw" (RGB) or "latents", or an Encoding value
    jpeg_quality: int = 0
    width: int = 0
    height: int = 0
    credits: int = 0  # initial flow-control credit


def start_request(prompt: str, options: SessionOptions) -> pb.GenerateRequest:
    """The first message of a session."""
    start = pb.StartSession(
        prompt=prompt,
        pipeline=options.pipeline,
        chunks=options.chunks,
        height=options.height,
        width=options.width,
        session_hooks=hook_configs(options.hooks),
        output=pb.OutputFormat(encoding=encoding_value(options.encoding), jpeg_quality=options.jpeg_quality),
        initial_credits=options.credits,
    )
    if options.seed is not None:
        start.seed = options.seed
    if options.pipeline_options:
        start.pipeline_options.CopyFrom(to_struct(options.pipeline_options))
    # Parameters without a name go to the server's default policy, which is what an empty name selects.
    if options.cache_policy or options.policy_params:
        start.cache_policy.CopyFrom(plugin_config(options.cache_policy or "", options.policy_params))
    return pb.GenerateRequest(start=start)


def change_prompt_request(prompt: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(change_prompt=pb.ChangePrompt(prompt=prompt))


def grant_request(chunks: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(grant_credits=pb.GrantCredits(chunks=chunks))


def stop_request() -> pb.GenerateRequest:
    return pb.GenerateRequest(stop=pb.StopSession())


def resume_request(token: str, last_chunk_index: int | None, credits: int) -> pb.GenerateRequest:
    """The first message of a call that continues a session whose call dropped."""
    resume = pb.ResumeSession(token=token, initial_credits=credits)
    if last_chunk_index is not None:
        resume.last_chunk_index = last_chunk_index
    return pb.GenerateRequest(resume=resume)
