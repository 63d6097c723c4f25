"""Train a lab model: the autoencoder, then the causal transformer; write the model folder.

``python -m drift_lab.train --preset smoke --seed 0 --out FOLDER`` runs both stages (see
``drift_lab.training_vae`` and ``drift_lab.training_transformer``) and writes a diffusers folder that the
server's ``load_model`` reads, plus ``training.json`` (command, seed, preset, world data version, losses,
wall time) and ``MODEL_CARD.md``. Runs are reproducible on a CPU: the seed fixes the weights' initialisation,
the training scenes and every noise draw, so one seed (with one thread count: float reductions are split
by thread) gives the same weights every time.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_lab.latents import video_frame_count
from drift_lab.model import FRAMES_PER_BLOCK, PRESETS, LabPreset, build_lab_components, get_preset, save_lab_model
from drift_lab.training_data import build_pool, scene_seeds
from drift_lab.training_loop import resolve_dtype
from drift_lab.training_transformer import train_transformer
from drift_lab.training_vae import train_vae
from drift_lab.world import DATA_VERSION
from tokentrim_server.models.causal_wan import CausalWanTransformer


@dataclass(frozen=True)
class RunOptions:
    """How one training run is carried out (the preset says what is trained)."""

    seed: int = 0
    vae_steps: int | None = None  # None: the preset's
    steps: int | None = None
    context_noise_aug: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int = 50
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    command: str = ""

    def validate(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        for name in ("vae_steps", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1; got {self.log_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads}")
        resolve_dtype(self.dtype)


def effective_preset(preset: LabPreset, options: RunOptions) -> LabPreset:
    """The preset with the run's overrides applied (what ``training.json`` records)."""
    overrides: dict[str, Any] = {}
    if options.vae_steps is not None:
        overrides["vae_steps"] = options.vae_steps
    if options.steps is not None:
        overrides["steps"] = options.steps
    if options.context_noise_aug is not None:
        overrides["context_noise_aug"] = options.context_noise_aug
    return preset.with_training(**overrides)


def train_lab_model(preset: LabPreset, out: str | Path, options: RunOptions) -> dict[str, Any]:
    """Train both stages and write the model folder ``out``; returns the ``training.json`` metadata."""
    options.validate()
    preset = effective_preset(preset, options)
    config = preset.training
    device = torch.device(options.device)
    dtype = resolve_dtype(options.dtype)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    # One generator for the scenes (numpy), one for every noise and timestep draw (torch, on the CPU so a
    # GPU run draws the same values); the global RNG is seeded too, for anything drawing from it.
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)

    components = build_lab_components(preset, options.seed)
    vae = components.vae.to(device)
    vae_progress = train_vae(vae, preset.world, config, rng, dtype, options.log_every)

    encoder = components.prompt_encoder()
    encoder.text_encoder.to(device)
    clip_frames = video_frame_count(config.clip_chunks * FRAMES_PER_BLOCK)
    pool = build_pool(vae, encoder, preset.world, scene_seeds(rng, config.pool_clips), clip_frames, device, True)

    model = CausalWanTransformer(components.transformer.to(device), preset.text_len, "sdpa")
    transformer_progress = train_transformer(model, pool, config, rng, generator, dtype, options.log_every)

    components.vae, components.transformer = vae.cpu(), model.base.cpu()
    components.text_encoder = components.text_encoder.cpu()
    metadata = {
        "command": options.command,
        "seed": options.seed,
        "preset": preset.as_dict(),
        "data_version": DATA_VERSION,
        "world": preset.as_dict()["world"],
        "clip_chunks": config.clip_chunks,
        "frames_per_block": FRAMES_PER_BLOCK,
        "default_size": list(preset.frame_size),
        "vae_steps": config.vae_steps,
        "steps": config.steps,
        "context_noise_aug": config.context_noise_aug,
        "pool_clips": len(pool),
        "device": options.device,
        "dtype": options.dtype,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "parameters": {
            "transformer": _count(components.transformer),
            "vae": _count(components.vae),
            "text_encoder": _count(components.text_encoder),
        },
        "latents_mean": list(vae.config.latents_mean),
        "latents_std": list(vae.config.latents_std),
        "losses": {
            **{f"vae_{name}": value for name, value in vae_progress.final().items()},
            **{f"transformer_{name}": value for name, value in transformer_progress.final().items()},
        },
        "history": {"vae": vae_progress.history, "transformer": transformer_progress.history},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    save_lab_model(components, out, default_size=preset.frame_size, metadata=metadata)
    return metadata


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS), help="model and training preset")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, training scenes and noise")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--steps-vae", type=int, default=None, help="autoencoder steps (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="transformer steps (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(("float32", "bfloat16")), help="autocast compute dtype"
    )
    parser.add_argument(
        "--context-noise-aug",
        type=float,
        default=None,
        help="noise the clean context to a random timestep in [0, T] while training (default: the preset's)",
    )
    parser.add_argument("--log-every", type=int, default=50, help="print a progress line every N steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). 1 is much faster on a CPU shared with other work: these "
        "small kernels spend their time in thread synchronisation when the cores are oversubscribed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = RunOptions(
        seed=args.seed,
        vae_steps=args.steps_vae,
        steps=args.steps,
        context_noise_aug=args.context_noise_aug,
        device=args.device,
        dtype=args.dtype,
        log_every=args.log_every,
        threads=args.threads,
        command=shlex.join(["python", "-m", "drift_lab.train", *arguments]),
    )
    try:
        metadata = train_lab_model(get_preset(args.preset), args.out, options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    losses = ", ".join(f"{name} {value:.5f}" for name, value in metadata["losses"].items())
    print(f"wrote {args.out} in {metadata['wall_seconds']} s ({losses})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
