"""A lab video's first chunk drawn from its prompt: the scene the caption names, rendered and encoded through
the model's own autoencoder.

A lab model is a regression model sampled in a few steps: from noise alone its first chunk is near the mean of
every scene the caption allows, where the objects' positions average out, and it draws only some of the named
objects. The lab's own runs therefore always start from a true chunk (``prefill_chunks``). A served video has
no true chunk, so the ``lab_scene`` session hook (``plugins/labscene``) starts the first chunk from these
latents instead, noised to a level the model then denoises from (image-to-video style).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from drift_lab.latents import encode_frames, video_frame_count
from drift_lab.model import TRAINING_FILE
from drift_lab.rollout import recorded_world
from drift_lab.world import WorldSpec, render, scene_from_caption
from tokentrim_server.loading.components import load_vae


@functools.lru_cache(maxsize=4)
def _model_parts(folder: str) -> tuple[WorldSpec, AutoencoderKLWan]:
    """The world a lab model was trained on and its autoencoder (float32, CPU), loaded once per folder."""
    root = Path(folder)
    record = root / TRAINING_FILE
    if not record.is_file():
        raise ValueError(f"model {folder!r} is not a drift-lab model folder (it has no {TRAINING_FILE})")
    world = recorded_world(root.name, json.loads(record.read_text()))
    return world, load_vae(root).eval().requires_grad_(False)


def caption_latents(folder: str, caption: str, seed: int, latent_frames: int) -> torch.Tensor:
    """Normalised latents ``[1, F, C, h, w]`` (float32, CPU) of the first ``latent_frames`` latent frames of a
    scene showing ``caption`` in the world the model in ``folder`` was trained on; what the caption leaves open
    (sizes within their class, positions, velocities) is drawn from ``seed``. Raises ``ValueError`` naming what
    is wrong with the caption or the folder."""
    world, vae = _model_parts(folder)
    scene = scene_from_caption(caption, seed, world)
    return encode_frames(vae, render(scene, 0, video_frame_count(latent_frames)))
