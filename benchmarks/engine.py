"""Engine benchmark: seconds per chunk, frames per second, time to first frame, for each pipeline.

    python benchmarks/engine.py                                   # tiny model on the CPU
    python benchmarks/engine.py --size 1.3b --random-weights --device cuda --height 480 --width 832
    python benchmarks/engine.py --policy tokentrim --sessions 4   # 4 interleaved TokenTrim sessions

``--size 1.3b --random-weights`` builds the full Wan 2.1 T2V 1.3B architecture with random weights (no
download): the speed is the real one. Per pipeline: an untimed warm-up session of ``--warmup`` chunks (its
first frame is ``cold_time_to_first_frame_seconds``), then ``--sessions`` sessions opened together and run
round-robin on the one device, ``1 + --chunks`` chunks each. A session's first chunk gives its time to first
frame (prompt K/V, denoising and decode of chunk 0, from the moment it is opened); the ``--chunks`` after it
are timed (denoising under the cache policy plus VAE decode) for the chunk latencies and the throughput.
Prints a table, then one JSON object per pipeline.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from tokentrim_server.cli.options import parse_option
from tokentrim_server.engine.generation import ChunkStep, GenerationSession, SessionPlan
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import tiny_transformer_config, tiny_vae_config
from tokentrim_server.pipelines.options import PipelineOptions
from tokentrim_server.pipelines.registry import PIPELINES, pipeline_options
from tokentrim_server.policies import create_policy

# Wan 2.1 T2V 1.3B transformer (the config of Wan2.1-T2V-1.3B-Diffusers/transformer).
WAN_1_3B = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}
SIZES = {"tiny": (tiny_transformer_config, tiny_vae_config, 16), "1.3b": (lambda: WAN_1_3B, dict, 512)}
BENCH_PROMPT = "a benchmark session"  # every benchmark session embeds the same (random) prompt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_component_arguments(parser)
    parser.add_argument("--pipeline", action="append", choices=sorted(PIPELINES), help="default: all")
    parser.add_argument("--chunks", type=int, default=6, help="chunks timed per session, after its first")
    parser.add_argument("--warmup", type=int, default=1, help="chunks of the untimed warm-up session (0: none)")
    parser.add_argument("--sessions", type=int, default=1, help="sessions run round-robin on the device")
    parser.add_argument("--no-decode", action="store_true", help="time denoising only, without the VAE")
    return parser


def add_component_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, device and session options shared with ``profile_chunk.py``."""
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for --size 1.3b (no weights here)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--attention-backend", default="auto", help="auto, sdpa, xformers or flash")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--policy", default="none", help="cache policy from the registry (none, tokentrim, ...)")
    parser.add_argument("--policy-param", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="a cache-policy parameter (JSON value); repeatable")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values up front, naming the flag."""
    for name in ("chunks", "sessions"):
        if getattr(args, name, 1) <= 0:
            raise SystemExit(f"--{name} must be > 0; got {getattr(args, name)}")
    if getattr(args, "warmup", 0) < 0:
        raise SystemExit(f"--warmup must be >= 0; got {args.warmup}")
    if args.size != "tiny" and not args.random_weights:
        raise SystemExit("--size 1.3b needs --random-weights (no weights can be loaded here)")
    if args.height <= 0 or args.width <= 0 or args.height % 16 or args.width % 16:
        raise SystemExit(f"--height and --width must be positive multiples of 16; got {args.height}x{args.width}")
    try:
        create_policy(args.policy, dict(args.policy_param))
    except (LookupError, ValueError) as error:
        raise SystemExit(f"--policy/--policy-param: {error}") from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


class FixedPromptEncoder:
    """Random prompt embeddings whatever the prompt (the 5B-parameter UMT5 is not needed for speed)."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    def encode(self, prompt: str) -> torch.Tensor:
        return self.embeddings


def build_bundle(args: argparse.Namespace) -> ModelBundle:
    """The model for ``--size``/``--device``/``--dtype``: transformer and VAE with seeded random weights, and a
    fixed random prompt embedding in place of the text encoder."""
    model, vae, prompt = build_components(args)
    return ModelBundle(f"wan2.1-t2v-{args.size}-random", model, vae, FixedPromptEncoder(prompt))  # type: ignore[arg-type]


def build_components(args: argparse.Namespace) -> tuple[CausalWanTransformer, AutoencoderKLWan, torch.Tensor]:
    """The transformer, the VAE (seeded random weights) and a random prompt for ``--size``/``--device``/``--dtype``."""
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[
        args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    ]
    transformer_config, vae_config, text_len = SIZES[args.size]
    torch.manual_seed(0)
    with torch.device(device):
        base = WanTransformer3DModel.from_config(transformer_config()).to(dtype).eval()
        vae = AutoencoderKLWan(**vae_config()).to(dtype).eval()
    model = CausalWanTransformer(base, text_len, args.attention_backend, compile=args.compile)
    prompt = torch.randn(1, min(text_len, 64), base.config.text_dim, device=device, dtype=dtype)
    return model, vae, prompt


def serving_options(names: Sequence[str] | None) -> dict[str, PipelineOptions]:
    """The benchmarked pipelines' options: what a server's session gets (e.g. Self Forcing's local window)."""
    return {name: pipeline_options(name, PIPELINES[name].serving_defaults) for name in names or sorted(PIPELINES)}


@dataclass
class BenchSession:
    """One session (the engine's device session) and what its chunks cost."""

    session: GenerationSession
    decode: bool
    opened: float
    first_frame_seconds: float | None = None
    chunks: int = 0
    frames: int = 0
    latencies: list[float] = field(default_factory=list)
    denoise_times: list[float] = field(default_factory=list)
    decode_times: list[float] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)

    def step(self, device: torch.device, record: bool) -> tuple[ChunkStep, Any]:
        """Denoise (under the policy) and decode the next chunk; ``record`` adds its timings to the session's."""
        step, denoise = timed(self.session.step, device)
        latents = step.result.chunk.latents
        if self.decode:
            decoded, decode = timed(lambda: self.session.decode(step), device)
        else:
            decoded, decode = None, 0.0
        if self.first_frame_seconds is None:
            self.first_frame_seconds = time.perf_counter() - self.opened
        self.chunks += 1
        if record:
            self.latencies.append(denoise + decode)
            self.denoise_times.append(denoise)
            self.decode_times.append(decode)
            self.reports.append(step.result.report)
            self.frames += 4 * latents.shape[1] if decoded is None else decoded.shape[0]
        return step, decoded

    def close(self) -> None:
        self.session.close()


def open_session(
    bundle: ModelBundle, pipeline: str, options: PipelineOptions, args: argparse.Namespace, seed: int, decode: bool
) -> BenchSession:
    """A fresh, unbounded session (prompt K/V, cache, policy instance, decoder) with noise seed ``seed``."""
    opened = time.perf_counter()
    plan = SessionPlan(
        prompt=BENCH_PROMPT, seed=seed, pipeline=pipeline, options=options, chunks=None, height=args.height,
        width=args.width, policy=create_policy(args.policy, dict(args.policy_param)), decode=decode,
    )
    return BenchSession(GenerationSession(bundle, plan), plan.decode, opened)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory so far and what it measures (device allocations on CUDA, the process's RSS elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_max_rss"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (no interpolation: a reported latency is one that happened)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_pipeline(
    bundle: ModelBundle, pipeline: str, options: PipelineOptions, args: argparse.Namespace
) -> dict[str, Any]:
    device = bundle.transformer.device
    cold_first_frame = None
    if args.warmup:
        warm = open_session(bundle, pipeline, options, args, 0, not args.no_decode)
        for _ in range(args.warmup):
            warm.step(device, record=False)
        cold_first_frame = warm.first_frame_seconds
        warm.close()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decode = not args.no_decode
    sessions = [open_session(bundle, pipeline, options, args, seed, decode) for seed in range(args.sessions)]
    for number, session in enumerate(sessions):
        print(f"[{pipeline}] first chunk of session {number}", file=sys.stderr, flush=True)
        session.step(device, record=False)
    started = time.perf_counter()
    for index in range(args.chunks):
        print(f"[{pipeline}] chunk {index + 1}/{args.chunks} x {args.sessions} session(s)", file=sys.stderr,
              flush=True)
        for session in sessions:
            session.step(device, record=True)
    wall = time.perf_counter() - started
    memory, memory_kind = peak_memory(device)
    for session in sessions:
        session.close()
    return summarize(bundle.transformer, pipeline, args, sessions, wall, cold_first_frame, memory, memory_kind)


def summarize(
    model: CausalWanTransformer,
    pipeline: str,
    args: argparse.Namespace,
    sessions: list[BenchSession],
    wall: float,
    cold_first_frame: float | None,
    memory: int,
    memory_kind: str,
) -> dict[str, Any]:
    """The JSON record of one pipeline (the keys of earlier versions keep their meaning)."""
    latencies = [x for s in sessions for x in s.latencies]
    timed_chunks = len(latencies)
    frames = sum(s.frames for s in sessions)
    reports = [r for s in sessions for r in s.reports]
    first_frames = [s.first_frame_seconds for s in sessions]
    return {
        "pipeline": pipeline, "size": args.size, "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."), "attention_backend": model.attention_backend,
        "compile": model.compiled, "policy": args.policy, "policy_params": dict(args.policy_param),
        "height": args.height, "width": args.width, "sessions": len(sessions), "chunks": args.chunks,
        "seconds_per_chunk": sum(latencies) / timed_chunks,
        "p50_chunk_seconds": statistics.median(latencies),
        "p95_chunk_seconds": percentile(latencies, 0.95),
        "denoise_seconds_per_chunk": sum(x for s in sessions for x in s.denoise_times) / timed_chunks,
        "decode_seconds_per_chunk": sum(x for s in sessions for x in s.decode_times) / timed_chunks,
        # Throughput of all sessions together, and what each one's viewer sees.
        "frames_per_second": frames / wall,
        "per_session_frames_per_second": [s.frames / wall for s in sessions],
        "time_to_first_frame_seconds": first_frames[0],
        "max_time_to_first_frame_seconds": max(first_frames),
        "session_time_to_first_frame_seconds": first_frames,
        "cold_time_to_first_frame_seconds": cold_first_frame,
        "policy_seconds_per_chunk": sum(r.policy_seconds for r in reports) / timed_chunks,
        "triggered_chunks": sum(r.triggered for r in reports),
        "regenerations": sum(r.regenerations for r in reports),
        "peak_memory_bytes": memory, "peak_memory_kind": memory_kind,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_arguments(args)
    bundle = build_bundle(args)
    return [bench_pipeline(bundle, name, options, args) for name, options in serving_options(args.pipeline).items()]


def main(argv: list[str] | None = None) -> int:
    results = run(build_parser().parse_args(argv))
    print(f"{'pipeline':<16}{'sessions':>9}{'s/chunk':>10}{'p95 s':>10}{'frames/s':>10}{'first frame s':>15}"
          f"{'peak MiB':>10}")
    for r in results:
        print(f"{r['pipeline']:<16}{r['sessions']:>9}{r['seconds_per_chunk']:>10.3f}{r['p95_chunk_seconds']:>10.3f}"
              f"{r['frames_per_second']:>10.1f}{r['time_to_first_frame_seconds']:>15.3f}"
              f"{r['peak_memory_bytes'] / 2**20:>10.0f}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
