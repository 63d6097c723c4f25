"""Training data from the world: scene seeds, rendered clips, and the pool of encoded clips.

Training scenes are drawn below ``EVALUATION_SEED_OFFSET`` from a generator seeded by the run's seed, so a
run is reproducible and no evaluated scene is ever trained on. Clips start at world frame 0, as rollouts do.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from drift_lab.latents import encode_raw, latent_statistics, normalise_latents, register_latent_statistics
from drift_lab.rollout import EVALUATION_SEED_OFFSET
from drift_lab.world import DATA_VERSION, WorldSpec, render, sample_scene, shape_masks
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
    """Encoded training clips: normalised latents ``[N, F, C, h, w]``, prompt embeddings ``[N, L, D]`` and,
    when known, which latent cells show an object (bool ``[N, F, 1, h, w]``, :func:`latent_object_cells`).

    Embeddings are zero-padded to the model's ``text_len``, which is what ``encode_text`` does with an
    unpadded prompt, so a batch of differently long captions stacks into one tensor.
    """

    latents: torch.Tensor
    prompts: torch.Tensor
    captions: list[str]
    objects: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``size`` clips drawn with replacement: latents, prompts, object cells (None when unknown)."""
        index = torch.from_numpy(rng.integers(0, len(self), size=size))
        objects = None if self.objects is None else self.objects[index]
        return self.latents[index], self.prompts[index], objects


def latent_object_cells(objects: np.ndarray, temporal_scale: int, spatial_scale: int) -> torch.Tensor:
    """Object pixels (bool ``[B, T, H, W]``, ``T = 1 + temporal_scale k``) as the latent cells that encode any
    of them: bool ``[B, 1 + k, 1, H / spatial_scale, W / spatial_scale]``.

    A latent frame encodes the first video frame alone, then ``temporal_scale`` frames each (Wan's causal VAE),
    and a latent pixel a ``spatial_scale``-pixel square; a cell counts if an object touches it in any of them.
    """
    pixels = torch.from_numpy(np.asarray(objects, dtype=bool))
    batch, frames, height, width = pixels.shape
    if (frames - 1) % temporal_scale or height % spatial_scale or width % spatial_scale:
        raise ValueError(
            f"objects must be [B, 1 + {temporal_scale}k, H, W] with H and W multiples of {spatial_scale}; "
            f"got {tuple(pixels.shape)}"
        )
    rest = pixels[:, 1:].reshape(batch, -1, temporal_scale, height, width).any(dim=2)
    per_latent_frame = torch.cat([pixels[:, :1], rest], dim=1)
    cells = per_latent_frame.reshape(batch, -1, height // spatial_scale, spatial_scale, width // spatial_scale,
                                     spatial_scale).any(dim=5).any(dim=3)  # fmt: skip
    return cells[:, :, None]


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
    cache: Path | None = None,
) -> ClipPool:
    """Render and encode ``seeds``' clips, write their per-channel latent statistics into the VAE config, and
    return them normalised with those statistics (so the pool is ~N(0, 1) per channel), with the latent cells
    their objects cover.

    With ``cache`` (a folder), the encoded clips are kept there under a key of everything they depend on
    (world version and spec, seeds, frame count, every VAE weight), and a later call with the same inputs,
    e.g. a resumed run or a fine-tune of the same seed, loads them instead of encoding them again.
    """
    path = None if cache is None else cache / f"pool-{_pool_key(vae, world, seeds, frames)}.pt"
    if path is not None and path.is_file():
        stored = torch.load(path, weights_only=True)
        raw, captions, objects = list(stored["raw"]), list(stored["captions"]), list(stored["objects"])
        if progress:
            print(f"[pool] {len(captions)} encoded clips from {path}", file=sys.stderr, flush=True)
    else:
        raw, captions, objects = _encode_clips(vae, world, seeds, frames, progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            torch.save({"raw": raw, "captions": captions, "objects": objects}, temporary)
            temporary.replace(path)  # a run killed while writing leaves no truncated pool behind
            if progress:
                print(f"[pool] kept in {path}", file=sys.stderr, flush=True)
    mean, std = latent_statistics(raw)
    register_latent_statistics(vae, mean, std)
    latents = normalise_latents(vae, torch.cat(raw)).to(device)
    return ClipPool(latents, encode_prompts(encoder, captions, device), captions, torch.cat(objects).to(device))


def _encode_clips(
    vae: AutoencoderKLWan, world: WorldSpec, seeds: list[int], frames: int, progress: bool
) -> tuple[list[torch.Tensor], list[str], list[torch.Tensor]]:
    """Raw latents, captions and object cells of ``seeds``' clips, encoded ``ENCODE_BATCH`` at a time."""
    raw: list[torch.Tensor] = []
    captions: list[str] = []
    objects: list[torch.Tensor] = []
    for first in range(0, len(seeds), ENCODE_BATCH):
        clips = render_clips(world, seeds[first : first + ENCODE_BATCH], frames)
        raw.append(encode_raw(vae, clips.frames).cpu())
        captions += clips.captions
        objects.append(latent_object_cells(clips.objects, vae.config.scale_factor_temporal,
                                           vae.config.scale_factor_spatial))  # fmt: skip
        if progress:
            print(f"[pool] encoded {len(captions)}/{len(seeds)} clips", file=sys.stderr, flush=True)
    return raw, captions, objects


def _pool_key(vae: AutoencoderKLWan, world: WorldSpec, seeds: list[int], frames: int) -> str:
    """SHA-256 of what an encoded pool depends on."""
    digest = hashlib.sha256(json.dumps([DATA_VERSION, world.as_dict(), seeds, frames]).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def noised(latents: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``latents`` ``[B, F, C, h, w]`` brought to ``timesteps`` (per clip ``[B]`` or per frame ``[B, F]``) with
    fresh Gaussian noise, drawn on the CPU from ``generator`` so a run on any device sees the same noise."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    shaped = timesteps.to(latents.device).reshape(*timesteps.shape, *[1] * (latents.ndim - timesteps.ndim))
    return add_noise(latents, noise, shaped)
