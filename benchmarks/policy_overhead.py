"""Cache-policy overhead on the engine: TokenTrim against the `none` baseline, same tiny model and seed.

    python benchmarks/policy_overhead.py                 # tiny model, CPU, Self Forcing with a local window
    python benchmarks/policy_overhead.py --blocks 24 --repeats 5 --device cuda

Runs three sessions per repeat, interleaved so machine noise hits them alike: `none`, `tokentrim` at its
natural trigger rate (default parameters), and `tokentrim` forced to trigger on every chunk (first_step
stage, one regeneration each). Prints one JSON object:

* ``overhead_ratio``: median session time of tokentrim / none;
* ``trigger_rate``: triggered chunks / chunks in the natural run;
* ``forced_overhead_ratio``: median session time of forced tokentrim / none;
* ``decision_seconds_per_chunk`` and ``decision_fraction_of_chunk``: the decision's own time (latent
  summaries + inspect) per chunk, and that over the median `none` chunk time.

Needs the tokentrim plugin installed (``pip install -e plugins/tokentrim``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import torch

from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.engine.report import ChunkReport
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.pipelines.registry import pipeline_options
from tokentrim_server.policies import CachePolicy, Decision, create_policy, load_policy


def forced(policy_name: str) -> type[CachePolicy]:
    """The policy, triggering whenever it has a previous chunk to compare with (its own positions)."""
    base = load_policy(policy_name)

    class Forced(base):  # type: ignore[misc, valid-type]
        def inspect(self, candidate, cache) -> Decision:
            decision = super().inspect(candidate, cache)
            return replace(decision, triggered=candidate.previous is not None)

    return Forced


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=12, help="chunks per session")
    parser.add_argument("--repeats", type=int, default=3, help="sessions per policy (median taken)")
    parser.add_argument("--height", type=int, default=128, help="video height in pixels (latent: / 8)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--local-attn-frames", type=int, default=15)
    parser.add_argument("--sink-frames", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser


def session(bundle: ModelBundle, args, policy: CachePolicy):
    """Run one session (denoising only: the decoder is not the policy's cost); returns (seconds, reports)."""
    device = bundle.transformer.device
    options = pipeline_options(
        "self_forcing", {"local_attn_frames": args.local_attn_frames, "sink_frames": args.sink_frames}
    )
    plan = SessionPlan(
        prompt="a red ball", seed=args.seed, pipeline="self_forcing", options=options, chunks=args.blocks,
        height=args.height, width=args.width, policy=policy, decode=False,
    )
    generation = GenerationSession(bundle, plan)
    reports: list[ChunkReport] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for _ in range(args.blocks):
        reports.append(generation.step().result.report)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    generation.close()
    return sum(r.chunk_seconds for r in reports), reports


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    bundle = load_model(ModelSpec(model="tiny", device=str(device), seed=args.seed))
    shape = bundle.latent_shape(args.height, args.width)
    variants = {
        "none": lambda: create_policy("none"),
        "tokentrim": lambda: create_policy("tokentrim"),
        "forced": lambda: forced("tokentrim")(),
    }
    session(bundle, args, create_policy("none"))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    reports: dict[str, list[ChunkReport]] = {}
    for _ in range(args.repeats):
        for name, make in variants.items():
            seconds, reports[name] = session(bundle, args, make())
            times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    natural = reports["tokentrim"]
    decision = statistics.fmean(r.decision_seconds for r in natural)
    none_chunk = median["none"] / args.blocks
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "blocks": args.blocks,
        "repeats": args.repeats,
        "latent_shape": list(shape),
        "tokens_per_frame": (shape[1] // 2) * (shape[2] // 2),
        "none_seconds_per_chunk": none_chunk,
        "tokentrim_seconds_per_chunk": median["tokentrim"] / args.blocks,
        "forced_seconds_per_chunk": median["forced"] / args.blocks,
        "overhead_ratio": median["tokentrim"] / median["none"],
        "trigger_rate": sum(r.triggered for r in natural) / len(natural),
        "forced_overhead_ratio": median["forced"] / median["none"],
        "forced_trigger_rate": sum(r.triggered for r in reports["forced"]) / len(reports["forced"]),
        "decision_seconds_per_chunk": decision,
        "decision_fraction_of_chunk": decision / none_chunk,
        "policy_seconds_per_chunk": statistics.fmean(r.policy_seconds for r in natural),
    }


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(build_parser().parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
