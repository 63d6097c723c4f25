"""The ``lab_scene`` hook's effect: are the objects a lab model's prompt names on screen, with and without it?

    python -m benchmarks.lab_scene_effect                        # from the repository root: the demo's model
    python -m benchmarks.lab_scene_effect drift_lab/weights/cpu-wide-lanes-seed1 --levels 1 0.5 --seeds 24

A served lab video starts from its prompt alone (nothing prefilled). Per model, ``noise_level`` and session
seed this streams ``--chunks`` chunks of Self Forcing with the model's trained options (``training.json``), the
``none`` policy and the ``lab_scene`` hook at that level (1: the hook changes nothing, bit for bit: the plain
session), decodes them as the server does, and looks for the caption's objects in frames 0, 8, the middle and
the last with the lab's own detector (``drift_lab.measure.detect``: a component of the object's palette colour
of at least the lab's minimum area). A seed *keeps* the scene when every named object is found in every
checked frame. Prints a table per model and level (seeds that keep the scene, mean fraction of named objects
found per checked frame, mean seconds of the first chunk and of the session), then one JSON object per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from drift_lab.measure import detect
from drift_lab.rollout import LabModel, decode_chunks, load_lab_model
from drift_lab.world import scene_from_caption
from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import create_hook
from tokentrim_server.models.vae import StreamingVaeDecoder
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.policies import create_policy

DEMO_MODEL = Path(__file__).resolve().parents[1] / "drift_lab" / "weights" / "cpu-wide-lanes-seed0"
DEMO_CAPTION = "a red circle and a blue square bouncing on a plain gray background"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="*", default=[DEMO_MODEL],
                        help="drift-lab model folders (default: the demo's, cpu-wide-lanes-seed0)")  # fmt: skip
    parser.add_argument("--caption", default=DEMO_CAPTION, help="the prompt, in the lab world's caption grammar")
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.875, 0.625, 0.5, 0.375],
                        help="lab_scene noise levels in (0, 1]; 1 is the plain session")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=12, help="session seeds 0..N-1 per model and level")
    parser.add_argument("--chunks", type=int, default=6, help="chunks per session")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def checked_frames(count: int) -> list[int]:
    """Frames 0, 8, the middle and the last of a ``count``-frame video (fewer when they coincide)."""
    return sorted({0, min(8, count - 1), count // 2, count - 1})


def session(model: LabModel, folder: Path, caption: str, seed: int, level: float, chunks: int) -> dict:
    """One streamed session: the named objects found per checked frame, and its timings."""
    bundle = model.bundle
    stream = build_pipeline("self_forcing", bundle.transformer, model.options("self_forcing")).open(
        bundle.prompt_encoder.encode(caption), bundle.latent_shape(*bundle.default_size), SeededNoise(seed), chunks
    )
    hooks = [create_hook("lab_scene", {"noise_level": level})]
    started = time.perf_counter()
    with open_runner(stream, create_policy("none"), seed, hooks, prompt=caption, model=str(folder)) as runner:
        results = list(runner)
    seconds = time.perf_counter() - started
    latents = torch.cat([result.chunk.latents for result in results], dim=1)
    with torch.no_grad():
        video = decode_chunks(StreamingVaeDecoder(bundle.vae), latents)[0]
    scene = scene_from_caption(caption, seed, model.world)
    named = Counter(shape.colour for shape in scene.shapes)
    found = []
    for index in checked_frames(video.shape[0]):
        detected = Counter(detection.colour for detection in detect(video[index], scene))
        found.append(sum(min(detected[colour], count) for colour, count in named.items()) / sum(named.values()))
    return {"found": found, "frames": checked_frames(video.shape[0]),
            "first_chunk_seconds": results[0].report.chunk_seconds, "seconds": seconds}


def describe(row: dict) -> str:
    found = ", ".join(f"{fraction:.2f}" for fraction in row["found_per_checked_frame"])
    return (
        f"{row['model']:<24} noise_level {row['noise_level']:<6g} keeps the scene in "
        f"{row['seeds_keeping_scene']:>2}/{row['seeds']} seeds; objects found at frames {row['checked_frames']}: "
        f"{found}; first chunk {row['first_chunk_seconds']:.2f} s, session {row['session_seconds']:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not all(0.0 < level <= 1.0 for level in args.levels):
        raise SystemExit(f"--levels: every level must be in (0, 1], got {args.levels}")
    rows = []
    for folder in args.models:
        model = load_lab_model(folder)
        for level in args.levels:
            runs = [session(model, folder, args.caption, seed, level, args.chunks) for seed in range(args.seeds)]
            rows.append({
                "model": folder.name, "noise_level": level, "seeds": args.seeds, "chunks": args.chunks,
                "checked_frames": runs[0]["frames"],
                "seeds_keeping_scene": sum(all(f == 1.0 for f in run["found"]) for run in runs),
                "found_per_checked_frame": [statistics.fmean(run["found"][i] for run in runs)
                                            for i in range(len(runs[0]["found"]))],
                "first_chunk_seconds": statistics.fmean(run["first_chunk_seconds"] for run in runs),
                "session_seconds": statistics.fmean(run["seconds"] for run in runs),
            })  # fmt: skip
            print(describe(rows[-1]), flush=True)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
