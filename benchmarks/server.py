"""Server benchmarks: (1) the server's overhead over generating in process, (2) concurrent sessions.

    python benchmarks/server.py                                   # tiny model on the CPU
    python benchmarks/server.py --size 1.3b --random-weights --device cuda --height 480 --width 832

(1) runs the same session (prompt, seed, chunks, JPEG frames) twice: in process (the device session
stepped, decoded and encoded in a plain loop) and through a real server on localhost with the Python
client, and prints ``overhead_ratio`` = server seconds / in-process seconds (target <= 1.05). The server
overlaps decoding with the next chunk's denoising, so it can come out below 1.
(2) runs 1, 2, 4 and 8 sessions at once and prints, per level: total chunks and frames per second, per-session
p50/p95 chunk latency (the server's chunk latency: queue wait + denoise + decode + encode), p50 time to
first frame seen by the client, and KV-cache memory per session (reserved and peak in use).
Every result is one JSON line. ``--size 1.3b`` uses random prompt embeddings (no UMT5 weights here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import torch
from engine import SIZES, build_bundle
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim_client import Client

from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.server.background import BackgroundServer
from tokentrim_server.server.config import load_config
from tokentrim_server.server.encoding import jpeg_frames
from tokentrim_server.server.requests import RequestValidator

PROMPT = "a red car drives along the beach at sunset"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for --size 1.3b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8, help="chunks per session (default: %(default)s)")
    parser.add_argument("--policy", default="none", help="cache policy of every session")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated session counts")
    parser.add_argument("--repeats", type=int, default=3,
                        help="overhead runs per side; the best is kept (0: skip the overhead benchmark)")
    return parser


def load_bundle(args: argparse.Namespace) -> ModelBundle:
    if args.size == "tiny":
        dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
        return load_model(ModelSpec(model="tiny", device=args.device, dtype=dtype,
                                    attention_backend=args.attention_backend, compile=args.compile))
    return build_bundle(args)


def server_flags(args: argparse.Namespace, sessions: int) -> list[str]:
    return ["--max-sessions", str(sessions), "--default-policy", args.policy, "--cache-budget", "64GiB",
            "--max-height", str(args.height), "--max-width", str(args.width)]


def in_process_seconds(args: argparse.Namespace, bundle: ModelBundle) -> float:
    """The session generated in a plain loop, with the server's own validation building the plan."""
    config = load_config(server_flags(args, 1), {})
    validator = RequestValidator(config, bundle, bundle.default_size, 64 * 2**30)
    planned = validator.plan(pb.StartSession(prompt=PROMPT, seed=0, chunks=args.chunks, height=args.height,
                                             width=args.width))
    device = bundle.transformer.device
    started = time.perf_counter()
    session = GenerationSession(bundle, planned.plan)
    for _ in range(args.chunks):
        step = session.step()
        jpeg_frames(session.decode(step), planned.jpeg_quality)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed


def run_session(target: str, args: argparse.Namespace, seed: int, out: dict) -> None:
    """One client session; records its chunk latencies, time to first frame and cache sizes in ``out``."""
    started = time.perf_counter()
    latencies, cache_bytes, first, frames = [], [], None, 0
    with Client(target) as client, client.session(PROMPT, seed=seed, chunks=args.chunks, height=args.height,
                                                  width=args.width) as session:
        for chunk in session:
            if first is None:
                first = time.perf_counter() - started
            timings = chunk.message.timings
            latencies.append(timings.queue_wait_seconds + timings.denoise_seconds + timings.decode_seconds
                             + timings.encode_seconds + timings.prompt_change_seconds)
            cache_bytes.append(chunk.message.cache_report.cache_bytes_after)
            frames += chunk.message.frame_count
        reserved = session.started.cache_budget_bytes
    out.update(seconds=time.perf_counter() - started, latencies=latencies, first=first, reserved=reserved,
               peak_cache=max(cache_bytes), frames=frames)


def overhead(args: argparse.Namespace, bundle: ModelBundle) -> dict:
    """Alternate in-process and served runs (so machine noise hits both alike) and keep each side's best."""
    in_process, served = [], []
    with BackgroundServer(server_flags(args, 1), bundle) as server:
        for _ in range(args.repeats):
            in_process.append(in_process_seconds(args, bundle))
            result: dict = {}
            run_session(server.target, args, 0, result)
            served.append(result["seconds"])
    return {"benchmark": "server_overhead", "size": args.size, "device": args.device, "height": args.height,
            "width": args.width, "chunks": args.chunks, "repeats": args.repeats,
            "in_process_seconds": min(in_process), "server_seconds": min(served),
            "overhead_ratio": min(served) / min(in_process)}


def concurrency(args: argparse.Namespace, bundle: ModelBundle, sessions: int) -> dict:
    with BackgroundServer(server_flags(args, sessions), bundle) as server:
        run_session(server.target, replace_chunks(args, 1), 99, {})  # warm-up
        results = [{} for _ in range(sessions)]
        threads = [threading.Thread(target=run_session, args=(server.target, args, seed, results[seed]))
                   for seed in range(sessions)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    latencies = sorted(seconds for result in results for seconds in result["latencies"])
    return {
        "benchmark": "concurrent_sessions", "sessions": sessions, "size": args.size, "device": args.device,
        "height": args.height, "width": args.width, "chunks_per_session": args.chunks,
        "total_chunks_per_second": sessions * args.chunks / wall,
        "total_frames_per_second": sum(result["frames"] for result in results) / wall,
        "p50_chunk_latency_seconds": statistics.median(latencies),
        "p95_chunk_latency_seconds": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "p50_time_to_first_frame_seconds": statistics.median(result["first"] for result in results),
        "cache_reserved_bytes_per_session": results[0]["reserved"],
        "cache_peak_bytes_per_session": max(result["peak_cache"] for result in results),
    }


def replace_chunks(args: argparse.Namespace, chunks: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "chunks": chunks})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bundle = load_bundle(args)
    if args.repeats > 0:
        print(json.dumps(overhead(args, bundle)), flush=True)
    for sessions in (int(text) for text in args.concurrency.split(",")):
        print(json.dumps(concurrency(args, bundle, sessions)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
