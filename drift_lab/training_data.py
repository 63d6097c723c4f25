"""Training data from the world: scene seeds, rendered clips, and the pool of encoded clips.

Training scenes are drawn below ``EVALUATION_SEED_OFFSET`` from a generator seeded by the run's seed, so a
run is reproducible and no evaluated scene is ever trained on. Clips start at world frame 0, as rollouts do.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from drift_lab.latents import encode_raw, latent_statistics, normalise_latents, register_latent_statistics
from drift_lab.rollout import EVALUATION_SEED_OFFSET
from drift_lab.world import WorldSpec, render, sample_scene, shape_masks
from tokentrim_server.models.text_encoder import PromptEncoder
from tokentrim_server.pipelines.schedule import add_noise

ENCODE_BATCH = 8  # clips per VAE encode call while building the pool


def scene_seeds(rng: np.random.Generator, count: int) -> list[int]:
    """``count`` training scene seeds, all below the evaluation seeds."""
    return [int(s) for s in rng.integers(0, EVALUATION_SEED_OFFSET, size=count)]


@dataclass
class Clips:
    """Rendered world clips, where their objects are, and their captions."""

    frames: np.ndarray  # uint8 [B, T, H, W, 3]
    captions: list[str]
    objects: np.ndarray  # bool [B, T, H, W]: pixels covered by any object


def render_clips(world: WorldSpec, seeds: list[int], frames: int, start: int = 0) -> Clips:
    """Clips of ``frames`` frames of scenes ``seeds`` from world frame ``start``."""
    scenes = [sample_scene(seed, world) for seed in seeds]
    return Clips(
        np.stack([render(scene, start, frames) for scene in scenes]),
        [scene.caption for scene in scenes],
        np.stack([shape_masks(scene, start, frames).any(axis=0) for scene in scenes]),
    )


@dataclass
class ClipPool:
    """Encoded training clips: normalised latents ``[N, F, C, h, w]`` and prompt embeddings ``[N, L, D]``.

    Embeddings are zero-padded to the model's ``text_len``, which is what ``encode_text`` does with an
    unpadded prompt, so a batch of differently long captions stacks into one tensor.
    """

    latents: torch.Tensor
    prompts: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(rng.integers(0, len(self), size=size))
        return self.latents[index], self.prompts[index]


def encode_prompts(encoder: PromptEncoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """Prompt embeddings ``[N, text_len, D]`` zero-padded, each distinct caption encoded once."""
    cache: dict[str, torch.Tensor] = {}
    out = torch.zeros(len(captions), encoder.text_len, encoder.text_dim)
    for row, caption in enumerate(captions):
        if caption not in cache:
            cache[caption] = encoder.encode(caption)[0].float().cpu()
        embedding = cache[caption]
        out[row, : embedding.shape[0]] = embedding
    return out.to(device)


def build_pool(
    vae: AutoencoderKLWan,
    encoder: PromptEncoder,
    world: WorldSpec,
    seeds: list[int],
    frames: int,
    device: torch.device,
    progress: bool = False,
) -> ClipPool:
    """Render and encode ``seeds``' clips, write their per-channel latent statistics into the VAE config, and
    return them normalised with those statistics (so the pool is ~N(0, 1) per channel)."""
    raw: list[torch.Tensor] = []
    captions: list[str] = []
    for first in range(0, len(seeds), ENCODE_BATCH):
        clips = render_clips(world, seeds[first : first + ENCODE_BATCH], frames)
        raw.append(encode_raw(vae, clips.frames).cpu())
        captions += clips.captions
        if progress:
            print(f"[pool] encoded {len(captions)}/{len(seeds)} clips", file=sys.stderr, flush=True)
    mean, std = latent_statistics(raw)
    register_latent_statistics(vae, mean, std)
    latents = normalise_latents(vae, torch.cat(raw)).to(device)
    return ClipPool(latents, encode_prompts(encoder, captions, device), captions)


def noised(latents: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``latents`` ``[B, F, C, h, w]`` brought to ``timesteps`` (per clip ``[B]`` or per frame ``[B, F]``) with
    fresh Gaussian noise, drawn on the CPU from ``generator`` so a run on any device sees the same noise."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    shaped = timesteps.to(latents.device).reshape(*timesteps.shape, *[1] * (latents.ndim - timesteps.ndim))
    return add_noise(latents, noise, shaped)
