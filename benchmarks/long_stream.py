"""Long-stream benchmark: memory and time per chunk over a stream far past the rotary table (1024 latent frames).

    python benchmarks/long_stream.py                          # tiny model, both pipelines, 4096 latent frames
    python benchmarks/long_stream.py --frames 20000 --pipeline rolling_forcing --size 32

Runs one unbounded session of the embedded tiny model per pipeline through the engine's device session
(denoising, the cache policy, decoding) and prints one JSON line per window of ``--window`` latent frames:
the median seconds per chunk, the KV cache's allocated bytes and the process's peak RSS so far. A leak or a
growing cache shows as a rising column; a stream with no position limit shows flat ones.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.pipelines.registry import PIPELINES, pipeline_options
from tokentrim_server.policies import create_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", action="append", choices=sorted(PIPELINES), help="default: all")
    parser.add_argument("--frames", type=int, default=4096, help="latent frames to stream (default: %(default)s)")
    parser.add_argument("--window", type=int, default=512, help="latent frames per printed line")
    parser.add_argument("--size", type=int, default=32, help="frame height and width in pixels (multiple of 16)")
    parser.add_argument("--policy", default="none", help="cache policy of the session")
    parser.add_argument("--no-decode", action="store_true", help="denoise only")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    bundle = load_model(ModelSpec(model="tiny"))
    for name in args.pipeline or sorted(PIPELINES):
        options = pipeline_options(name, PIPELINES[name].serving_defaults)
        plan = SessionPlan(
            prompt="a long stream", seed=0, pipeline=name, options=options, chunks=None, height=args.size,
            width=args.size, policy=create_policy(args.policy), decode=not args.no_decode,
        )
        session = GenerationSession(bundle, plan)
        stream = session.runner.stream
        seconds: list[float] = []
        window_end = args.window
        while stream.emitted * stream.frames_per_block < args.frames:
            started = time.perf_counter()
            step = session.step()
            if plan.decode:
                session.decode(step)
            seconds.append(time.perf_counter() - started)
            frames = stream.emitted * stream.frames_per_block
            if frames >= window_end:
                print(json.dumps({
                    "pipeline": name, "latent_frames": frames, "chunks": stream.emitted,
                    "median_chunk_seconds": round(statistics.median(seconds), 5),
                    "kv_allocated_bytes": stream.cache.stats().allocated_bytes,
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
                }), flush=True)
                seconds, window_end = [], window_end + args.window
        session.close()


if __name__ == "__main__":
    main()
