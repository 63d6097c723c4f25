"""FlowMo's effect: the motion-variance loss of the emitted chunks, with and without the hook, on lab models.

    python -m benchmarks.flowmo_effect drift_lab/weights/smoke-seed0 --threads 1   # from the repository root
    python -m benchmarks.flowmo_effect drift_lab/weights/cpu-seed0 --setting x0='{"threshold": 0, "prediction": "x0"}'

Per model, pipeline, dtype and scene seed: one plain session and one session per FlowMo setting, from the same
keyed noise and prompt (the scene's caption), from text alone (nothing prefilled: the hook's first chunk is the
session's first, as on the server). Of every emitted chunk it takes FlowMo's loss (``motion_variance``,
float32) on the chunk's latents; of the first chunk also how far the hooked one is from the plain one (the
largest absolute difference and the fraction of elements that differ at all). The ``null_lr_1e-9`` setting is
the control: its Adam step (1e-9) is below the spacing of nearly every element, so the hook returns the
incoming latent, nearly; what it changes is the floor of the comparison. Reported per (pipeline, dtype,
setting), over every model's seeds: the mean loss of chunk 0 and of the chunks after it, plain and hooked; the
mean relative change per session (hooked / plain - 1) and in how many sessions the hooked loss is lower; the
hook's own report (its loss on the prediction before and after it, averaged); the seconds the hook took and
the first chunk's seconds, plain and hooked. Prints a table, then one JSON object per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from flowmo_plugin import motion_variance

from drift_lab.rollout import EVALUATION_SEED_OFFSET, LabModel, load_lab_model
from drift_lab.world import sample_scene
from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import create_hook
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.policies import create_policy

PIPELINES = ("self_forcing", "rolling_forcing")
DTYPES = ("float32", "bfloat16")
# The null control (a step of 1e-9 is below bfloat16's spacing everywhere and float32's for all but the
# smallest elements: the hook returns the incoming latent, nearly), FlowMo's defaults, then the settings
# docs/plugins.md documents.
DEFAULT_SETTINGS = {
    "null_lr_1e-9": {"lr": 1e-9},
    "default": {},
    "iterations_4": {"iterations": 4},
    "lr_1e-2": {"lr": 0.01},
    "all_steps": {"threshold": 0.0},
    "all_steps_x0": {"threshold": 0.0, "prediction": "x0"},
    "all_steps_x0_iterations_4": {"threshold": 0.0, "prediction": "x0", "iterations": 4},
    "all_steps_x0_lr_1e-2": {"threshold": 0.0, "prediction": "x0", "lr": 0.01},
}


@dataclass
class Session:
    """One session's emitted chunks (float32 latents) and its first chunk's report figures."""

    chunks: list[torch.Tensor]
    first_chunk_seconds: float
    hook_values: dict[str, float]
    hook_seconds: float

    @property
    def losses(self) -> list[float]:
        return [float(motion_variance(chunk)) for chunk in self.chunks]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="drift-lab model folders (drift_lab/weights/...)")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--seeds", type=int, default=8, help="scene seeds per model (held-out evaluation scenes)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per session (the first and those after it)")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=JSON",
        help="a FlowMo setting to compare with the plain session, repeatable (default: the settings in "
        f"DEFAULT_SETTINGS: {', '.join(DEFAULT_SETTINGS)})",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 steadies a busy machine)")
    return parser


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    if not pairs:
        return DEFAULT_SETTINGS
    settings = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise SystemExit(f"--setting must be NAME=JSON; got {pair!r}")
        settings[name] = json.loads(value)
    return settings


def run_session(model: LabModel, pipeline_name: str, seed: int, chunks: int, hook_params: dict | None) -> Session:
    """One session from scene ``seed``'s caption and keyed noise; FlowMo with ``hook_params`` unless ``None``."""
    bundle = model.bundle
    scene = sample_scene(seed, model.world)
    pipeline = build_pipeline(pipeline_name, bundle.transformer, model.options(pipeline_name))
    prompt = bundle.prompt_encoder.encode(scene.caption).to(bundle.transformer.device)
    stream = pipeline.open(prompt, bundle.latent_shape(scene.height, scene.width), SeededNoise(seed), chunks)
    hooks = [] if hook_params is None else [create_hook("flowmo", hook_params)]
    with open_runner(stream, create_policy("none"), seed=seed, hooks=hooks) as runner:
        results = list(runner)
    first = results[0].report
    hook = first.hooks[0] if first.hooks else None
    return Session(
        [result.chunk.latents.float().cpu() for result in results],
        first.chunk_seconds,
        dict(hook.values) if hook else {},
        hook.seconds if hook else 0.0,
    )


def compare(plain: list[Session], hooked: list[Session]) -> dict:
    """Figures of one setting against the plain sessions of the same models and seeds."""
    mean = statistics.fmean
    first_plain, first_hooked = [s.losses[0] for s in plain], [s.losses[0] for s in hooked]
    later_plain = [mean(s.losses[1:]) for s in plain]
    later_hooked = [mean(s.losses[1:]) for s in hooked]
    differences = [(h.chunks[0] - p.chunks[0]).abs() for p, h in zip(plain, hooked, strict=True)]
    figures = {
        "first_chunk_loss_plain": mean(first_plain),
        "first_chunk_loss_hooked": mean(first_hooked),
        "first_chunk_relative_change": mean(h / p - 1 for p, h in zip(first_plain, first_hooked, strict=True)),
        "first_chunk_lower": sum(h < p for p, h in zip(first_plain, first_hooked, strict=True)),
        "first_chunk_max_abs_difference": max(float(d.max()) for d in differences),
        "first_chunk_fraction_changed": mean(float((d > 0).float().mean()) for d in differences),
        "later_chunks_loss_plain": mean(later_plain),
        "later_chunks_loss_hooked": mean(later_hooked),
        "later_chunks_relative_change": mean(h / p - 1 for p, h in zip(later_plain, later_hooked, strict=True)),
        "later_chunks_lower": sum(h < p for p, h in zip(later_plain, later_hooked, strict=True)),
        "hook_seconds": mean(s.hook_seconds for s in hooked),
        "first_chunk_seconds_plain": mean(s.first_chunk_seconds for s in plain),
        "first_chunk_seconds_hooked": mean(s.first_chunk_seconds for s in hooked),
    }
    for key in ("loss_before", "loss_after"):
        values = [s.hook_values[key] for s in hooked if key in s.hook_values]
        if values:
            figures[f"hook_{key}"] = mean(values)
    return figures


def run(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_settings(args.setting)
    seeds = [EVALUATION_SEED_OFFSET + index for index in range(args.seeds)]
    rows = []
    for dtype in args.dtypes:
        models = [load_lab_model(folder, dtype=dtype) for folder in args.models]
        for pipeline in args.pipelines:
            plain = [run_session(model, pipeline, seed, args.chunks, None) for model in models for seed in seeds]
            for name, params in settings.items():
                print(f"{dtype} {pipeline} {name}", file=sys.stderr, flush=True)
                hooked = [run_session(model, pipeline, seed, args.chunks, params) for model in models for seed in seeds]
                rows.append({
                    "models": [model.name for model in models], "dtype": dtype, "pipeline": pipeline,
                    "setting": name, "params": params, "sessions": len(plain), "chunks": args.chunks,
                    "threads": torch.get_num_threads(), **compare(plain, hooked),
                })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    header = (
        "| pipeline | dtype | setting | chunk 0 loss plain -> hooked | change | lower | max abs diff | changed "
        "| chunks 1.. loss plain -> hooked | change | lower | hook s |"
    )
    lines = [header, "|" + " --- |" * 12]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {r['dtype']} | {r['setting']} "
            f"| {r['first_chunk_loss_plain']:.5g} -> {r['first_chunk_loss_hooked']:.5g} "
            f"| {r['first_chunk_relative_change']:+.2e} | {r['first_chunk_lower']}/{r['sessions']} "
            f"| {r['first_chunk_max_abs_difference']:.2g} | {r['first_chunk_fraction_changed']:.0%} "
            f"| {r['later_chunks_loss_plain']:.5g} -> {r['later_chunks_loss_hooked']:.5g} "
            f"| {r['later_chunks_relative_change']:+.2e} | {r['later_chunks_lower']}/{r['sessions']} "
            f"| {r['hook_seconds']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    rows = run(build_parser().parse_args(argv))
    print(table(rows))
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
