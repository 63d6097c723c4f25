"""A small untrained lab model folder for the lab's end-to-end tests (no training, no trained weights needed)."""

from __future__ import annotations

from pathlib import Path

from drift_lab.model import micro_lab_folder


def random_lab_folder(root: Path, name: str = "untrained", seed: int = 0) -> Path:
    """Write the untrained ``micro`` lab model folder ``root/name`` (see :func:`drift_lab.model.micro_lab_folder`)."""
    return micro_lab_folder(root, name, seed)
