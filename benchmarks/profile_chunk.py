"""Where a chunk's time goes: denoising (by kind of work), cache policy, VAE decode, host copies, JPEG encoding.

    python benchmarks/profile_chunk.py                                  # tiny model, CPU, Self Forcing
    python benchmarks/profile_chunk.py --size 1.3b --random-weights --device cuda --height 480 --width 832 \\
        --policy tokentrim --trace out/chunk_trace.json

A warm-up session first (``--warmup`` chunks; compiles when ``--compile``). Then two sessions with the same
seed run ``1 + --chunks`` chunks each; the first chunk of each is skipped (no cache yet) and the rest are
measured: the first session without a profiler (the true chunk time, per stage), the second under
``torch.profiler`` (CPU, and CUDA when on a GPU). Each chunk is denoised under the cache policy, decoded by
the streaming VAE, turned into uint8 frames on the host and JPEG-encoded as the server does.

Stages are timed by the wall clock (the device synchronised at each boundary). The denoising stage is split
by the profiler: ops inside the ``tt::`` ranges of ``CausalWanTransformer`` (self-attention kernel,
cross-attention kernel, KV-cache step) go to those categories; the transformer's other ops to linear/FFN
(projections, FFN, patch embedding) or to norms/modulation (norms, modulation, RoPE and other element-wise
ops); memcpy kernels to host copies. Times are CPU self time on the CPU and kernel time on CUDA. The policy
category is the runner's own ``policy_seconds`` (latent summaries, decision, pruning); ``other_denoise`` is
what the denoising stage's wall time leaves: Python and launch overhead, noise, scheduler arithmetic (on CUDA
also the GPU's idle gaps). Profiled figures are scaled to the unprofiled stage times for the table.

Prints a table, then one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from engine import (
    BenchSession,
    add_component_arguments,
    build_bundle,
    check_arguments,
    open_session,
    peak_memory,
    serving_options,
    timed,
)
from torch.profiler import ProfilerActivity, profile, record_function

from tokentrim_server.models.vae import frames_to_uint8
from tokentrim_server.pipelines.registry import PIPELINES
from tokentrim_server.server.encoding import jpeg_frames

STAGES = ("denoise", "vae_decode", "to_host", "encode")
# Profiler ranges (from CausalWanTransformer and from the stages here) and the category each one owns.
RANGES = {
    "tt::self_attention": "self_attention",
    "tt::cross_attention": "cross_attention",
    "tt::kv_cache": "kv_cache",
}
DENOISE_CATEGORIES = (
    "self_attention", "cross_attention", "linear_ffn", "norms_modulation", "kv_cache", "compiled_block",
    "host_copies", "policy", "other_denoise",
)
CATEGORIES = (*DENOISE_CATEGORIES, "vae_decode", "frame_encoding")
LINEAR_OPS = frozenset({"aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::gelu"})
COMPILED_PREFIXES = ("Torch-Compiled Region", "CompiledFunction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_component_arguments(parser)
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="self_forcing")
    parser.add_argument("--chunks", type=int, default=4, help="chunks measured per session, after its first")
    parser.add_argument("--warmup", type=int, default=2, help="chunks of the untimed warm-up session (0: none)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the encoding stage")
    parser.add_argument("--trace", default=None, help="also write the profiler's Chrome trace to this file")
    return parser


def run_chunk(session: BenchSession, device: torch.device, quality: int) -> tuple[dict[str, float], Any]:
    """One chunk through every stage; returns the stage wall times and the chunk's policy report."""
    times: dict[str, float] = {}
    # The device session's stages one by one (GenerationSession.step and decode, split where they can be).
    runner, decoder = session.session.runner, session.session.decoder
    assert decoder is not None
    with record_function("tt::denoise"):
        result, times["denoise"] = timed(runner.next_chunk, device)
    with record_function("tt::vae_decode"):
        frames, times["vae_decode"] = timed(lambda: decoder.decode_chunk(result.chunk.latents), device)
    with record_function("tt::to_host"):
        pixels, times["to_host"] = timed(lambda: frames_to_uint8(frames)[0].cpu().numpy(), device)
    with record_function("tt::encode"):
        _, times["encode"] = timed(lambda: jpeg_frames(pixels, quality), device)
    return times, result.report


def measure(
    session: BenchSession, device: torch.device, args: argparse.Namespace, profiler: profile | None = None
) -> tuple[dict[str, float], list]:
    """Skip the session's first chunk, then the summed stage times and the reports of ``--chunks`` chunks.

    ``profiler`` records the measured chunks only.
    """
    run_chunk(session, device, args.jpeg_quality)
    totals: dict[str, float] = defaultdict(float)
    reports = []
    with profiler or contextlib.nullcontext():
        for index in range(args.chunks):
            print(f"chunk {index + 1}/{args.chunks}", file=sys.stderr, flush=True)
            times, report = run_chunk(session, device, args.jpeg_quality)
            for stage, seconds in times.items():
                totals[stage] += seconds
            reports.append(report)
    session.close()
    return dict(totals), reports


def _ancestry(event: Any) -> Iterable[Any]:
    while event is not None:
        yield event
        event = event.cpu_parent


def classify(event: Any, on_cuda: bool) -> str | None:
    """The denoising category of one profiler event's self time (``None``: not inside the denoising stage)."""
    chain = list(_ancestry(event))
    if all(node.name != "tt::denoise" for node in chain):
        return None
    if on_cuda and any(kernel.name.startswith("Memcpy") for kernel in event.kernels):
        return "host_copies"
    linear = False
    for node in chain:
        name = node.name
        if name in RANGES:
            return RANGES[name]
        if name.startswith(COMPILED_PREFIXES):
            return "compiled_block"
        if name == "tt::transformer":
            if node is event:  # the range's own time: Python between the ops
                return "other_denoise"
            return "linear_ffn" if linear else "norms_modulation"
        linear = linear or name in LINEAR_OPS or name.startswith("aten::conv")
    return "other_denoise"  # noise, scheduler arithmetic, the policy's own ops (counted by its report)


def attribute(events: Iterable[Any], on_cuda: bool) -> dict[str, float]:
    """Seconds of denoising work per category (CPU self time, or kernel time on CUDA), summed over events."""
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue  # kernels count through the CPU op that launched them
        category = classify(event, on_cuda)
        if category in (None, "other_denoise"):
            continue  # other_denoise is the residual of the stage's wall time: never count it twice
        microseconds = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        totals[category] += microseconds / 1e6
    return dict(totals)


def breakdown(stages: dict[str, float], work: dict[str, float], policy: float) -> dict[str, float]:
    """Every category's seconds for the given stage totals; ``other_denoise`` is the denoising residual."""
    categories = dict.fromkeys(CATEGORIES, 0.0)
    categories.update(work)
    categories["policy"] = policy
    categories["other_denoise"] = stages["denoise"] - sum(categories[c] for c in DENOISE_CATEGORIES)
    categories["host_copies"] += stages["to_host"]  # copies inside denoising (CUDA memcpy) + the frames' copy
    categories["vae_decode"] = stages["vae_decode"]
    categories["frame_encoding"] = stages["encode"]
    return categories


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_arguments(args)
    bundle = build_bundle(args)
    model = bundle.transformer
    device = model.device
    on_cuda = device.type == "cuda"
    options = serving_options([args.pipeline])[args.pipeline]

    def fresh_session() -> BenchSession:
        return open_session(bundle, args.pipeline, options, args, 0, decode=True)

    if args.warmup:
        print(f"warm-up: {args.warmup} chunk(s)", file=sys.stderr, flush=True)
        warm = fresh_session()
        for _ in range(args.warmup):
            run_chunk(warm, device, args.jpeg_quality)
        warm.close()
    print("unprofiled session", file=sys.stderr, flush=True)
    stages, _ = measure(fresh_session(), device, args)
    print("profiled session", file=sys.stderr, flush=True)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    prof = profile(activities=activities)
    session = fresh_session()
    profiled_stages, reports = measure(session, device, args, prof)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    work = attribute(prof.events(), on_cuda)
    policy = sum(r.policy_seconds for r in reports)
    profiled = breakdown(profiled_stages, work, policy)
    # The profiler slows every op down; its shares of the denoising stage are applied to the true stage time.
    factor = stages["denoise"] / profiled_stages["denoise"]
    estimated = breakdown(stages, {c: t * factor for c, t in work.items()}, policy * factor)
    per_chunk = 1.0 / args.chunks
    memory, memory_kind = peak_memory(device)
    return {
        "pipeline": args.pipeline, "size": args.size, "device": str(device),
        "dtype": str(model.dtype).removeprefix("torch."), "attention_backend": model.attention_backend,
        "compile": model.compiled, "policy": args.policy, "height": args.height, "width": args.width,
        "chunks": args.chunks, "timing": "cuda kernel time" if on_cuda else "cpu self time",
        "chunk_seconds": sum(stages.values()) * per_chunk,
        "stage_seconds": {s: stages[s] * per_chunk for s in STAGES},
        "profiled_chunk_seconds": sum(profiled_stages.values()) * per_chunk,
        "categories": {c: estimated[c] * per_chunk for c in CATEGORIES},
        "profiled_categories": {c: profiled[c] * per_chunk for c in CATEGORIES},
        "regenerations": sum(r.regenerations for r in reports),
        "peak_memory_bytes": memory, "peak_memory_kind": memory_kind,
    }


def main(argv: list[str] | None = None) -> int:
    result = run(build_parser().parse_args(argv))
    total = result["chunk_seconds"]
    print(f"{result['size']} {result['pipeline']} {result['device']} {result['dtype']} "
          f"{result['attention_backend']} compile={result['compile']} policy={result['policy']} "
          f"{result['height']}x{result['width']}: {total:.4f} s/chunk ({result['timing']})")
    print(f"{'category':<18}{'s/chunk':>10}{'share':>8}{'profiled s':>12}")
    for name in CATEGORIES:
        seconds = result["categories"][name]
        print(f"{name:<18}{seconds:>10.4f}{seconds / total:>8.1%}{result['profiled_categories'][name]:>12.4f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
