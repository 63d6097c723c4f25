"""Server configuration: defaults, then a TOML file, then ``TOKENTRIM_*`` environment variables, then flags.

Every option has one name: ``max_sessions`` is the TOML key, ``TOKENTRIM_MAX_SESSIONS`` the environment
variable and ``--max-sessions`` the flag; a bool option also has its negation, ``--no-compile``.
``docs/server.md`` lists them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokentrim_server.pipelines.self_forcing import SelfForcingPipeline

ENV_PREFIX = "TOKENTRIM_"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BOOLS = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the option."""


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``"512MiB"``, ``"8GiB"`` or ``"1.5GB"``; ``"auto"`` is left to the caller."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a size such as 8GiB, 512MiB or a byte count; got {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def option(default: Any, help: str) -> Any:
    """A scalar configuration field; ``help`` documents its flag (and docs/server.md)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ServerConfig:
    """Every option of ``tokentrim-server``; ``help`` metadata is the flag's documentation."""

    # model
    model: str = option("tiny", "'tiny' (embedded), a diffusers Wan folder or an original Wan folder")
    model_name: str | None = option(
        None, "the model's public name in GetServerInfo, SessionStarted and metrics (default: the --model folder's "
        "name; the path itself is never published)",
    )
    checkpoint: str | None = option(None, "distilled checkpoint replacing the transformer")
    checkpoint_key: str = option("generator_ema", "weight set inside the checkpoint")
    device: str = option("cpu", "torch device, e.g. cpu or cuda:0")
    dtype: str | None = option(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA)")
    attention_backend: str = option("auto", "auto, sdpa, xformers or flash")
    compile: bool = option(
        False,
        "torch.compile the transformer blocks (faster chunks after a slow first compile; see docs/performance.md)",
    )
    warmup_chunks: int = option(
        -1, "chunks of a throwaway session run at start-up, before health reports SERVING (compiles, autotunes, "
        "warms the allocator); -1: 2 when compile is on or the device is CUDA, else 0",
    )
    # network
    listen: list[str] = field(
        default_factory=lambda: ["0.0.0.0:50051"],
        metadata={"help": "gRPC listen address HOST:PORT; repeatable (comma-separated in env)"},
    )
    metrics_address: str = option("0.0.0.0", "address of the Prometheus /metrics endpoint")
    metrics_port: int = option(9464, "port of the /metrics endpoint; 0 picks a free one, -1 disables it")
    tls_cert: str | None = option(None, "PEM certificate chain; with --tls-key enables TLS")
    tls_key: str | None = option(None, "PEM private key of --tls-cert")
    tls_client_ca: str | None = option(None, "PEM CA bundle; when set, clients must present a certificate it signed")
    auth_token_file: str | None = option(None, "file of accepted bearer tokens, one per line; '#' starts a comment")
    auth_tokens: list[str] = field(
        default_factory=list, metadata={"help": "accepted bearer tokens (prefer the file or the env variable)"}
    )
    # sessions
    default_pipeline: str = option("self_forcing", "pipeline of sessions that name none")
    default_policy: str = option("none", "cache policy of sessions that name none")
    self_forcing_local_attn_frames: int = option(
        SelfForcingPipeline.serving_defaults["local_attn_frames"],
        "Self Forcing's default local attention window in latent frames (-1: global; sessions may override)",
    )
    max_sessions: int = option(4, "sessions that may run at once")
    max_batch_sessions: int = option(
        8, "most sessions whose chunks the scheduler steps together as one batched model call per denoising step "
        "(1: no batching)",
    )
    scheduler_fairness_seconds: float = option(
        0.5, "device seconds a session may get ahead of the others because it has the least playout slack (0: plain "
        "fair sharing of device time, ignoring slack)",
    )
    playout_prebuffer_seconds: float = option(
        0.5, "video a session's simulated viewer buffers before it starts playing (the playout clock behind slack, "
        "deadline misses and stalls)",
    )
    realtime_admission: bool = option(
        False, "refuse a new session (RESOURCE_EXHAUSTED) when the measured throughput says the admitted sessions "
        "could no longer all play in real time",
    )
    cache_budget: str = option(
        "auto", "KV-cache memory for all sessions, e.g. 8GiB; auto: half the free GPU memory after loading, 4GiB on CPU"
    )
    max_chunks: int = option(0, "most chunks per session (0: unbounded, until the client stops)")
    max_prompt_chars: int = option(2000, "longest prompt in characters")
    max_height: int = option(1280, "largest frame height")
    max_width: int = option(1280, "largest frame width")
    default_credits: int = option(2, "flow-control credit of sessions that ask for none")
    max_credits: int = option(16, "most outstanding flow-control credit per session")
    max_session_hooks: int = option(4, "most session hooks per session")
    max_message_bytes: int = option(1 << 20, "largest client message in bytes")
    max_denoising_steps: int = option(
        8, "most denoising steps per chunk a session may ask for (every session shares the device)"
    )
    max_hook_iterations: int = option(
        4, "most optimisation iterations per adjusted denoising step a session hook may run (e.g. FlowMo's)"
    )
    idle_timeout_seconds: float = option(
        60.0, "a session that waits this long without flow-control credit ends with DEADLINE_EXCEEDED (0: never)"
    )
    resume_hold_seconds: float = option(
        30.0, "a session whose call drops without stop is held this long for a resume, keeping its slot and "
        "reservation (0: never held)",
    )
    start_timeout_seconds: float = option(10.0, "time a client has to send its start message")
    drain_seconds: float = option(30.0, "on SIGTERM, time running sessions get before they end with UNAVAILABLE")
    jpeg_quality: int = option(90, "JPEG quality of sessions that ask for none")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        positive = (
            "max_sessions",
            "max_prompt_chars",
            "max_height",
            "max_width",
            "default_credits",
            "max_credits",
            "max_message_bytes",
            "start_timeout_seconds",
            "max_denoising_steps",
            "max_hook_iterations",
            "max_batch_sessions",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}")
        for name in (
            "max_chunks", "max_session_hooks", "drain_seconds", "idle_timeout_seconds", "resume_hold_seconds",
            "scheduler_fairness_seconds", "playout_prebuffer_seconds",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.warmup_chunks < -1:
            raise ConfigError(f"warmup_chunks must be >= -1 (-1: automatic); got {self.warmup_chunks}")
        if self.default_credits > self.max_credits:
            raise ConfigError(f"default_credits ({self.default_credits}) must be <= max_credits ({self.max_credits})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100]; got {self.jpeg_quality}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        if not self.listen:
            raise ConfigError("listen needs at least one HOST:PORT")
        if self.model_name is not None and not self.model_name.strip():
            raise ConfigError("model_name must not be empty")
        if self.cache_budget != "auto":
            try:
                parse_size(self.cache_budget)
            except ValueError as error:
                raise ConfigError(f"cache_budget: {error}") from None

    def pipeline_option_overrides(self) -> dict[str, dict[str, Any]]:
        """Per pipeline, the options this configuration sets for sessions (over the pipeline's serving defaults)."""
        return {"self_forcing": {"local_attn_frames": self.self_forcing_local_attn_frames}}

    def tokens(self) -> list[str]:
        """Every accepted bearer token (empty: authentication is off)."""
        tokens = list(self.auth_tokens)
        if self.auth_token_file is not None:
            try:
                lines = Path(self.auth_token_file).read_text().splitlines()
            except OSError as error:
                raise ConfigError(f"auth_token_file: cannot read {self.auth_token_file}: {error.strerror}") from None
            tokens += [line.split("#", 1)[0].strip() for line in lines]
        return [token for token in tokens if token]


_FIELDS = {spec.name: spec for spec in dataclasses.fields(ServerConfig)}


def _kind(name: str) -> type:
    """The scalar type of an option (list options: their element type)."""
    annotation = str(_FIELDS[name].type)
    for kind in (bool, int, float, str):
        if annotation.startswith(kind.__name__) or annotation.startswith(f"list[{kind.__name__}"):
            return kind
    raise TypeError(f"option {name} has an unsupported type {annotation}")


def _is_list(name: str) -> bool:
    return str(_FIELDS[name].type).startswith("list[")


def _convert(name: str, value: Any, source: str) -> Any:
    kind = _kind(name)
    if _is_list(name):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name} ({source}) must be a list; got {value!r}")
        return [_convert_scalar(name, kind, item, source) for item in items if str(item).strip()]
    return _convert_scalar(name, kind, value, source)


def _convert_scalar(name: str, kind: type, value: Any, source: str) -> Any:
    if kind is bool:
        return _convert_bool(name, value, source)
    try:
        # TOML true/false must not pass for 1/0 (int(True) == 1).
        if isinstance(value, bool):
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = kind(value.strip() if isinstance(value, str) else value)
        if kind is float and not math.isfinite(converted):  # "nan" and "inf" parse as floats
            raise ValueError
        return converted
    except (TypeError, ValueError):
        raise ConfigError(f"{name} ({source}) must be {kind.__name__}; got {value!r}") from None


def _convert_bool(name: str, value: Any, source: str) -> bool:
    """A TOML boolean, argparse's True/False, or one of the words in ``_BOOLS`` (case-insensitive)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise ConfigError(f"{name} ({source}) must be bool (true/false, 1/0, yes/no, on/off); got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentrim-server",
        description="Serve real-time text-to-video sessions over gRPC. Options also come from a TOML file "
        "(--config or TOKENTRIM_CONFIG; keys are the option names in snake_case) and from TOKENTRIM_<OPTION> "
        "environment variables; flags win over the environment, which wins over the file.",
    )
    parser.add_argument("--config", default=None, help="TOML configuration file")
    defaults = ServerConfig()
    for name, spec in _FIELDS.items():
        default = getattr(defaults, name)
        help_text = f"{spec.metadata['help']} (default: {default!r})"
        flag = "--" + name.replace("_", "-")
        if _is_list(name):
            parser.add_argument(flag, action="append", default=None, help=help_text)
        elif _kind(name) is bool:
            # --compile / --no-compile; None when neither is given, so the environment and the file still apply.
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse flags, read the file and the environment, and return a validated configuration."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"config file {path}: {error}") from None
        unknown = sorted(set(document) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"config file {path}: unknown option(s) {unknown}; known: {sorted(_FIELDS)}")
        values.update({name: _convert(name, value, f"config file {path}") for name, value in document.items()})
    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            values[name] = _convert(name, environ[variable], f"environment {variable}")
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            values[name] = _convert(name, value, "--" + name.replace("_", "-"))
    config = ServerConfig(**values)
    config.validate()
    return config
