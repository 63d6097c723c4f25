"""FlowMo benchmark: time to first frame and peak memory of a session, with and without FlowMo.

    python benchmarks/flowmo.py                                   # tiny model on the CPU
    python benchmarks/flowmo.py --size 1.3b --random-weights --device cuda --height 480 --width 832
    python benchmarks/flowmo.py --pipeline rolling_forcing --hook-param threshold=0 --hook-param prediction='"x0"'

Time to first frame: from opening the session (text K/V, runner, hook start) to the first chunk's decoded
frames; its parts are reported too, because on a small shared CPU the VAE decode dominates and is noisy.
Each mode runs in fresh processes, so its peak memory is its own: CUDA's peak allocation on a GPU, the
process's peak resident set on the CPU (weights and libraries included, so only large differences mean
anything). A process runs one untimed warm-up session, then ``--repeats`` timed ones; ``--rounds`` processes
per mode alternate with the other mode's, against drifting load. Reported: medians of the per-process
medians, the largest peak. Prints one JSON object per mode, then the comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from engine import BENCH_PROMPT, SIZES, build_bundle, timed

from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.hooks import create_hook
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.pipelines.registry import PIPELINES, pipeline_options
from tokentrim_server.policies import create_policy

MODES = ("plain", "flowmo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="self_forcing")
    parser.add_argument("--random-weights", action="store_true", help="required for --size 1.3b (no weights here)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 steadies a busy machine)")
    parser.add_argument("--repeats", type=int, default=7, help="timed sessions per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per mode, alternating with the other mode")
    parser.add_argument("--hook-param", action="append", default=[], metavar="KEY=JSON",
                        help="FlowMo parameter, repeatable (e.g. gradient_checkpointing=true, iterations=3)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    return parser


def _hook_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key] = json.loads(value)
    return params


def _session(args: argparse.Namespace, bundle: ModelBundle, flowmo: bool) -> dict:
    """One session up to its first decoded frame."""
    device = torch.device(args.device)
    hooks = (create_hook("flowmo", _hook_params(args.hook_param)),) if flowmo else ()
    plan = SessionPlan(
        prompt=BENCH_PROMPT, seed=0, pipeline=args.pipeline, options=pipeline_options(args.pipeline), chunks=1,
        height=args.height, width=args.width, policy=create_policy("none"), hooks=hooks,
    )

    def first_chunk():
        session = GenerationSession(bundle, plan)
        return session, session.step()

    (session, step), denoise_seconds = timed(first_chunk, device)
    frames, decode_seconds = timed(lambda: session.decode(step), device)
    session.close()
    report = step.result.report
    figures = {
        "time_to_first_frame_seconds": denoise_seconds + decode_seconds,
        "open_and_first_chunk_seconds": denoise_seconds,
        "first_chunk_seconds": report.chunk_seconds,
        "decode_seconds": decode_seconds,
        "frames": frames.shape[0],
    }
    for hook in report.hooks:
        figures |= {"hook_seconds": hook.seconds, **hook.values}
    return figures


def run_mode(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = build_bundle(args)
    model = bundle.transformer
    device = torch.device(args.device)
    flowmo = args.mode == "flowmo"
    _session(args, bundle, flowmo)  # warm-up: kernels, allocator, caches
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sessions = [_session(args, bundle, flowmo) for _ in range(args.repeats)]
    median = {key: statistics.median(s[key] for s in sessions) for key in sessions[0]}
    return {
        "mode": args.mode, "pipeline": args.pipeline, "size": args.size, "device": str(device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attention_backend": model.attention_backend, "height": args.height, "width": args.width,
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "hook_params": _hook_params(args.hook_param) if flowmo else None, **median,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
    }


def _combine(runs: list[dict]) -> dict:
    """One mode over its rounds: the median of each figure, the largest peak memory."""
    combined = dict(runs[0], rounds=len(runs))
    for key, value in runs[0].items():
        if isinstance(value, float):
            combined[key] = statistics.median(run[key] for run in runs)
    for key in ("peak_memory_bytes", "peak_rss_bytes"):
        if runs[0][key] is not None:
            combined[key] = max(run[key] for run in runs)
    return combined


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):  # modes alternate, so a change in the machine's load hits both
        for mode in MODES:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--mode", mode],
                                  check=True, capture_output=True, text=True)
            rounds[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {mode}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    results = {mode: _combine(rounds[mode]) for mode in MODES}
    for mode in MODES:
        print(json.dumps(results[mode]))
    plain, flowmo = results["plain"], results["flowmo"]
    comparison = {
        "time_to_first_frame_ratio": flowmo["time_to_first_frame_seconds"] / plain["time_to_first_frame_seconds"],
        "time_to_first_frame_added_seconds": flowmo["time_to_first_frame_seconds"]
        - plain["time_to_first_frame_seconds"],
        "first_chunk_ratio": flowmo["first_chunk_seconds"] / plain["first_chunk_seconds"],
    }
    peak = "peak_memory_bytes" if plain["peak_memory_bytes"] is not None else "peak_rss_bytes"
    comparison[f"{peak}_added"] = flowmo[peak] - plain[peak]
    print(json.dumps(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
