"""A small untrained lab model folder for the lab's end-to-end tests (no training, no trained weights needed).

The ``micro`` preset's random-weight components (32x32 frames, 4 tokens per latent frame, a three-chunk
training clip), saved the way ``drift_lab.train`` saves a trained model: every rollout, gate and report code
path runs on it in seconds. Its output is noise, so it fails the quality gate, as an untrained model must.
"""

from __future__ import annotations

from pathlib import Path

from drift_lab.model import PRESETS, build_lab_components, save_lab_model
from drift_lab.world import DATA_VERSION


def random_lab_folder(root: Path, name: str = "untrained", seed: int = 0) -> Path:
    """Write the untrained ``micro`` lab model folder ``root/name`` with its ``training.json``; returns it."""
    preset = PRESETS["micro"]
    metadata = {
        "seed": seed,
        "preset": preset.as_dict(),
        "data_version": DATA_VERSION,
        "world": preset.as_dict()["world"],
        "clip_chunks": preset.training.clip_chunks,
        "steps": 0,
    }
    components = build_lab_components(preset, seed)
    return save_lab_model(components, root / name, default_size=preset.frame_size, metadata=metadata)
