"""Engine benchmark: seconds per chunk and frames per second for each pipeline.

    python benchmarks/engine.py                                   # tiny model on the CPU
    python benchmarks/engine.py --size 1.3b --random-weights --device cuda --height 480 --width 832

``--size 1.3b --random-weights`` builds the full Wan 2.1 T2V 1.3B architecture with random weights (no
download): the speed is the real one. Prints a table, then one JSON object per pipeline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import tiny_transformer_config, tiny_vae_config
from tokentrim_server.models.vae import StreamingVaeDecoder
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import PIPELINES, build_pipeline

# Wan 2.1 T2V 1.3B transformer (the config of Wan2.1-T2V-1.3B-Diffusers/transformer).
WAN_1_3B = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}
SIZES = {"tiny": (tiny_transformer_config, tiny_vae_config, 16), "1.3b": (lambda: WAN_1_3B, dict, 512)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for --size 1.3b (no weights here)")
    parser.add_argument("--pipeline", action="append", choices=sorted(PIPELINES), help="default: all")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=6, help="chunks timed per pipeline (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed chunks first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--no-decode", action="store_true", help="time denoising only, without the VAE")
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def build_components(args: argparse.Namespace) -> tuple[CausalWanTransformer, AutoencoderKLWan, torch.Tensor]:
    """The transformer, the VAE (seeded random weights) and a random prompt for ``--size``/``--device``/``--dtype``."""
    if args.size != "tiny" and not args.random_weights:
        raise SystemExit("--size 1.3b needs --random-weights (no weights can be loaded here)")
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[
        args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    ]
    transformer_config, vae_config, text_len = SIZES[args.size]
    torch.manual_seed(0)
    with torch.device(device):
        base = WanTransformer3DModel.from_config(transformer_config()).to(dtype).eval()
        vae = AutoencoderKLWan(**vae_config()).to(dtype).eval()
    model = CausalWanTransformer(base, text_len, args.attention_backend)
    prompt = torch.randn(1, min(text_len, 64), base.config.text_dim, device=device, dtype=dtype)
    return model, vae, prompt


def run(args: argparse.Namespace) -> list[dict]:
    model, vae, prompt = build_components(args)
    device, dtype = torch.device(args.device), model.dtype
    latent_shape = (16, args.height // 8, args.width // 8)
    results = []
    for name in args.pipeline or sorted(PIPELINES):
        overrides = {"local_attn_frames": 21} if name == "self_forcing" else {}
        pipeline = build_pipeline(name, model, overrides)
        stream = pipeline.open(prompt, latent_shape, SeededNoise(0), num_blocks=None)
        decoder = StreamingVaeDecoder(vae)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        latencies, decode_times, frames = [], [], 0
        first_frame = None
        opened = time.perf_counter()
        for index in range(args.warmup + args.chunks):
            chunk, seconds = _timed(stream.next_chunk, device)
            decoded, decode_seconds = (None, 0.0) if args.no_decode else _timed(
                lambda c=chunk, d=decoder: d.decode_chunk(c.latents), device
            )
            if first_frame is None:
                first_frame = time.perf_counter() - opened
            if index >= args.warmup:
                latencies.append(seconds + decode_seconds)
                decode_times.append(decode_seconds)
                frames += 4 * chunk.latents.shape[1] if decoded is None else decoded.shape[1]
        stream.close()
        total = sum(latencies)
        ordered = sorted(latencies)
        results.append({
            "pipeline": name, "size": args.size, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "attention_backend": model.attention_backend, "height": args.height, "width": args.width,
            "chunks": args.chunks, "seconds_per_chunk": total / args.chunks,
            "p50_chunk_seconds": statistics.median(latencies),
            "p95_chunk_seconds": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "decode_seconds_per_chunk": sum(decode_times) / args.chunks,
            "frames_per_second": frames / total, "time_to_first_frame_seconds": first_frame,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        })
    return results


def main(argv: list[str] | None = None) -> int:
    results = run(build_parser().parse_args(argv))
    print(f"{'pipeline':<16}{'s/chunk':>10}{'p95 s':>10}{'frames/s':>10}{'first frame s':>15}")
    for r in results:
        print(f"{r['pipeline']:<16}{r['seconds_per_chunk']:>10.3f}{r['p95_chunk_seconds']:>10.3f}"
              f"{r['frames_per_second']:>10.1f}{r['time_to_first_frame_seconds']:>15.3f}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
