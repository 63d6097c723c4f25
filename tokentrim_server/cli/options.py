"""Command-line options shared by every tool that loads a model (generate, benchmark, server)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tokentrim_server.loading.model import ModelSpec


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (embedded random-weight model), a diffusers Wan folder, or an original Wan 2.1 folder",
    )
    group.add_argument("--checkpoint", help="distilled checkpoint (.pt/.safetensors) replacing the transformer")
    group.add_argument(
        "--checkpoint-key", default="generator_ema", help="weight set inside a distilled checkpoint"
    )
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="weights and activations (default: float32 on CPU, bfloat16 on CUDA)")
    group.add_argument("--attention-backend", default="auto", choices=["auto", "sdpa", "xformers", "flash"],
                       help="attention kernels; auto prefers flash, then xformers, on CUDA")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the transformer blocks (slow first chunks; see docs/performance.md)")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    return ModelSpec(
        model=args.model,
        checkpoint=args.checkpoint,
        checkpoint_key=args.checkpoint_key,
        device=args.device,
        dtype=dtype,
        attention_backend=args.attention_backend,
        compile=args.compile,
    )


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value (``local_attn_frames=12``, ``denoising_steps=[1000,500]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
