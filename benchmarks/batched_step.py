"""What batching sessions buys the model itself: N sessions' chunks stepped together against one after another.

    python benchmarks/batched_step.py --threads 1                        # tiny model on the CPU, 128x128
    python benchmarks/batched_step.py --size 1.3b --random-weights --device cuda --height 480 --width 832

Opens N sessions (Self Forcing, local window 21, latent output, cache policy ``--policy``, no server, no client)
for each count N of ``--concurrency`` and times
``--chunks`` chunks of every session, interleaved round by round: stepped one after another (as the device
worker runs them with ``--max-batch-sessions 1``), then stepped together as the scheduler batches them
(``engine/batching.py``: one batched model call per denoising step). The first round of each is a warm-up.
Prints one JSON line per session count: seconds per round both ways and ``speedup`` (sequential / batched).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from engine import add_component_arguments, sync
from server import PROMPT, load_bundle

from tokentrim_server.engine.batching import BatchRunner
from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions
from tokentrim_server.policies import create_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_component_arguments(parser)
    parser.add_argument("--chunks", type=int, default=6, help="timed chunks per session (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated session counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def open_sessions(bundle, args: argparse.Namespace, count: int) -> list[GenerationSession]:
    options = SelfForcingOptions(local_attn_frames=21)
    return [
        GenerationSession(bundle, SessionPlan(PROMPT, seed, "self_forcing", options, None, args.height, args.width,
                                              create_policy(args.policy, dict(args.policy_param)), decode=False))
        for seed in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args)
    device = bundle.transformer.device
    for count in (int(text) for text in args.concurrency.split(",")):
        alone, together = open_sessions(bundle, args, count), open_sessions(bundle, args, count)
        runner = BatchRunner(count)
        sequential_times, batched_times = [], []
        for round_ in range(args.chunks + 1):
            started = time.perf_counter()
            for session in alone:
                session.step()
            sync(device)
            middle = time.perf_counter()
            outcomes, _ = runner.run([session.step_job() for session in together])
            for outcome in outcomes:
                outcome.result()
            sync(device)
            if round_:  # the first round warms up
                sequential_times.append(middle - started)
                batched_times.append(time.perf_counter() - middle)
        runner.shutdown()
        for session in alone + together:
            session.close()
        sequential, batched = statistics.median(sequential_times), statistics.median(batched_times)
        print(json.dumps({
            "benchmark": "batched_step", "sessions": count, "size": args.size, "device": args.device,
            "height": args.height, "width": args.width, "threads": torch.get_num_threads(), "chunks": args.chunks,
            "sequential_seconds_per_round": sequential, "batched_seconds_per_round": batched,
            "speedup": sequential / batched,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
