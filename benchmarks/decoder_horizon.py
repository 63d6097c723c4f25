"""Does a lab autoencoder hold over a long stream? Its reconstruction of held-out truth, chunk by chunk.

    python -m benchmarks.decoder_horizon drift_lab/weights/cpu-vae-long drift_lab/weights/cpu-vae-stream
    python -m benchmarks.decoder_horizon drift_lab/weights/cpu-wide-lanes-switch-seed0 --chunks 8 --seeds 16

A lab model's causal VAE decoder is trained on clips of a few chunks; a served stream is decoded chunk after
chunk for as long as it runs. Per folder (a model folder or an autoencoder stage's, read from ``FOLDER/vae``
with the world its ``training.json`` records) this renders ``--seeds`` held-out scenes of that world for
``--chunks`` chunks, encodes them and decodes them as the server streams them (``StreamingVaeDecoder``, chunk
by chunk), and measures each frame against the truth with the lab's own measures (``drift_lab.measure``):
the *background deviation* (mean absolute error of the pixels away from every object, in [0, 1] of the RGB
range) and object survival. No transformer is involved: whatever drifts here, every video of the model shows.

Prints, per folder, the mean background deviation and survival per chunk, then the background deviation of
the last chunk per background colour (the failure is colour-specific), then one JSON object per folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.rows import figures, print_rows
from drift_lab.gate import load_vae_gate_inputs, reconstruct
from drift_lab.measure import measure
from drift_lab.model import TRAINING_FILE, decoder_horizon
from drift_lab.rollout import EVALUATION_SEED_OFFSET, chunk_first_frame
from drift_lab.world import render, sample_scene


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="model folders or autoencoder stage folders")
    parser.add_argument("--chunks", type=int, default=8, help="chunks per clip (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=8, help="held-out scenes per folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def chunk_means(values: np.ndarray, chunks: int) -> list[float]:
    """Per-frame ``values`` averaged over each chunk's frames (NaN frames, e.g. no object, left out)."""
    bounds = [chunk_first_frame(index) for index in range(chunks + 1)]
    return [float(np.nanmean(values[start:end])) for start, end in itertools.pairwise(bounds)]


def evaluate(folder: Path, chunks: int, seeds: int) -> dict:
    vae, world, _ = load_vae_gate_inputs(folder, "cpu", "float32")
    record = folder / TRAINING_FILE
    horizon = decoder_horizon(json.loads(record.read_text()) if record.is_file() else {})
    background, survival = [], []
    last_chunk_by_colour: dict[str, list[float]] = defaultdict(list)
    for number in range(seeds):
        scene = sample_scene(EVALUATION_SEED_OFFSET + number, world)
        frames = reconstruct(vae, render(scene, 0, chunk_first_frame(chunks)))
        metrics = measure(frames, scene, 0)
        background.append(chunk_means(metrics.background_deviation, chunks))
        survival.append(chunk_means(metrics.survival, chunks))
        last_chunk_by_colour[scene.background.colour].append(background[-1][-1])
    return {
        "folder": folder.name,
        "decoder_trained_frames": horizon,
        "chunks": chunks,
        "seeds": seeds,
        "background_deviation_per_chunk": np.mean(background, axis=0).tolist(),
        "survival_per_chunk": np.mean(survival, axis=0).tolist(),
        "last_chunk_background_deviation_by_colour": {
            colour: statistics.fmean(values) for colour, values in sorted(last_chunk_by_colour.items())
        },
    }


def describe(row: dict) -> str:
    by_colour = row["last_chunk_background_deviation_by_colour"]
    colours = ", ".join(f"{name} {value:.3f}" for name, value in by_colour.items())
    return "\n".join([
        f"{row['folder']} (decoder trained unrolled over {row['decoder_trained_frames']} frames; "
        f"{row['chunks']} chunks = {chunk_first_frame(row['chunks'])} frames, {row['seeds']} scenes)",
        f"  background deviation per chunk: {figures(row['background_deviation_per_chunk'], 3, ' ')}",
        f"  survival per chunk:             {figures(row['survival_per_chunk'], 2, ' ')}",
        f"  last chunk's background deviation by background colour: {colours}",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.chunks < 1 or args.seeds < 1:
        raise SystemExit(f"--chunks and --seeds must be >= 1; got {args.chunks} and {args.seeds}")
    missing = [str(folder) for folder in args.folders if not (folder / "vae").is_dir()]
    if missing:
        raise SystemExit(f"folders: no vae/ in {', '.join(missing)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        print_rows((evaluate(folder, args.chunks, args.seeds) for folder in args.folders), describe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
