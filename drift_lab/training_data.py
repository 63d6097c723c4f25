"""Training data from the world: scene seeds, rendered clips, and the pool of encoded clips.

Training scenes are drawn below ``EVALUATION_SEED_OFFSET`` from a generator seeded by the run's seed, so a
run is reproducible and no evaluated scene is ever trained on. Clips start at world frame 0, as rollouts do.

A pool may also hold *switch clips* (``TrainingConfig.switch_clips``): at a chunk boundary some objects take
other colours and the caption changes with them, so that a model learns to follow a prompt switch, which no
clip of the world's own ever shows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from drift_lab.latents import (
    encode_raw,
    latent_frame_count,
    latent_statistics,
    normalise_latents,
    register_latent_statistics,
)
from drift_lab.model import FRAMES_PER_BLOCK
from drift_lab.rollout import EVALUATION_SEED_OFFSET, chunk_first_frame
from drift_lab.world import DATA_VERSION, OBJECT_COLOURS, WorldSpec, recoloured, render, sample_scene, shape_masks
from tokentrim_server.models.text_encoder import PromptEncoder
from tokentrim_server.pipelines.schedule import add_noise

ENCODE_BATCH = 8  # clips per VAE encode call while building the pool
SWITCH_DRAWS = 1  # keys a switch clip's own draws (where, which objects, which colours) apart from its scene's
SWITCH_VERSION = "switch-v1"  # in the cache key of switch pools: bump when what a switch clip shows changes


def scene_seeds(rng: np.random.Generator, count: int) -> list[int]:
    """``count`` training scene seeds, all below the evaluation seeds."""
    return [int(s) for s in rng.integers(0, EVALUATION_SEED_OFFSET, size=count)]


@dataclass
class Clips:
    """Rendered world clips, where their objects are, and their captions."""

    frames: np.ndarray  # uint8 [B, T, H, W, 3]
    captions: list[str]
    objects: np.ndarray  # bool [B, T, H, W]: pixels covered by any object
    chunk_captions: list[tuple[str, ...]] | None = None  # switch clips: each chunk's caption


def render_clips(world: WorldSpec, seeds: list[int], frames: int, start: int = 0) -> Clips:
    """Clips of ``frames`` frames of scenes ``seeds`` from world frame ``start``."""
    scenes = [sample_scene(seed, world) for seed in seeds]
    return Clips(
        np.stack([render(scene, start, frames) for scene in scenes]),
        [scene.caption for scene in scenes],
        np.stack([shape_masks(scene, start, frames).any(axis=0) for scene in scenes]),
    )


def render_switch_clips(world: WorldSpec, seeds: list[int], frames: int, chunks: int) -> Clips:
    """Clips of ``frames`` frames (``chunks`` chunks) of scenes ``seeds`` in which, from the first frame of a
    chunk drawn in ``1 .. chunks - 1``, a non-empty subset of the objects takes colours the scene does not show
    (:func:`~drift_lab.world.recoloured`): the same motion, the caption of each chunk naming what it shows.
    The draws are keyed by the seed alone; ``captions`` holds each clip's first caption."""
    if chunks < 2:
        raise ValueError(f"a switch clip needs at least 2 chunks; got {chunks}")
    videos, chunk_captions, objects = [], [], []
    for seed in seeds:
        scene = sample_scene(seed, world)
        rng = np.random.default_rng([seed, SWITCH_DRAWS])
        at = int(rng.integers(1, chunks))
        count = len(scene.shapes)
        changed = rng.choice(count, size=int(rng.integers(1, count + 1)), replace=False)
        unused = [colour for colour in OBJECT_COLOURS if colour not in {s.colour for s in scene.shapes}]
        colours = [shape.colour for shape in scene.shapes]
        for index, colour in zip(changed, rng.choice(unused, size=len(changed), replace=False), strict=True):
            colours[int(index)] = str(colour)
        after = recoloured(scene, colours)
        switch = chunk_first_frame(at)
        videos.append(np.concatenate([render(scene, 0, switch), render(after, switch, frames - switch)]))
        chunk_captions.append((scene.caption,) * at + (after.caption,) * (chunks - at))
        objects.append(shape_masks(scene, 0, frames).any(axis=0))
    return Clips(np.stack(videos), [captions[0] for captions in chunk_captions], np.stack(objects), chunk_captions)


@dataclass
class ClipPool:
    """Encoded training clips: normalised latents ``[N, F, C, h, w]``, prompt embeddings per chunk
    ``[N, chunks, L, D]`` with each chunk's caption (a switch clip's change at a chunk boundary; the others
    repeat one) and, when known, which latent cells show an object (bool ``[N, F, 1, h, w]``,
    :func:`latent_object_cells`).

    Embeddings are zero-padded to the model's ``text_len``, which is what ``encode_text`` does with an
    unpadded prompt, so a batch of differently long captions stacks into one tensor.
    """

    latents: torch.Tensor
    prompts: torch.Tensor
    captions: list[tuple[str, ...]]
    objects: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def joined(self, other: ClipPool) -> ClipPool:
        """The clips of both pools, this one's first."""
        if (self.objects is None) != (other.objects is None):
            raise ValueError("pools to join must both know where their objects are, or neither")
        objects = None if self.objects is None else torch.cat([self.objects, other.objects])
        return ClipPool(torch.cat([self.latents, other.latents]), torch.cat([self.prompts, other.prompts]),
                        self.captions + other.captions, objects)  # fmt: skip

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


def encode_prompts(encoder: PromptEncoder, captions: list[str], device: torch.device | str) -> torch.Tensor:
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
    switches: bool = False,
) -> ClipPool:
    """Render and encode ``seeds``' clips, write their per-channel latent statistics into the VAE config, and
    return them normalised with those statistics (so the pool is ~N(0, 1) per channel), with the latent cells
    their objects cover.

    With ``switches``, the clips are :func:`render_switch_clips` (a caption change at a chunk boundary), and they
    are normalised with the statistics already in the VAE's config, those of the run's plain pool: build that
    first. With ``cache`` (a folder), the encoded clips are kept there under a key of everything they depend on
    (world version and spec, seeds, frame count, kind of clip, every VAE weight), and a later call with the same
    inputs, e.g. a resumed run or a fine-tune of the same seed, loads them instead of encoding them again.
    """
    chunks = latent_frame_count(frames) // FRAMES_PER_BLOCK
    if switches:
        key = _pool_key(vae, world, seeds, frames, SWITCH_VERSION)
        render_batch = partial(render_switch_clips, world, frames=frames, chunks=chunks)
        raw, captions, objects = _encoded(vae, seeds, render_batch, progress, cache, key)
        return _pool(vae, encoder, raw, [tuple(chunk_captions) for chunk_captions in captions], objects, device)
    key = _pool_key(vae, world, seeds, frames)
    raw, captions, objects = _encoded(vae, seeds, partial(render_clips, world, frames=frames), progress, cache, key)
    mean, std = latent_statistics(raw)
    register_latent_statistics(vae, mean, std)
    return _pool(vae, encoder, raw, [(caption,) * chunks for caption in captions], objects, device)


def _pool(
    vae: AutoencoderKLWan,
    encoder: PromptEncoder,
    raw: list[torch.Tensor],
    captions: list[tuple[str, ...]],
    objects: list[torch.Tensor],
    device: torch.device,
) -> ClipPool:
    """A pool of raw latents normalised with the VAE's statistics, each chunk's caption embedded."""
    latents = normalise_latents(vae, torch.cat(raw)).to(device)
    flat = encode_prompts(encoder, [caption for chunk_captions in captions for caption in chunk_captions], device)
    prompts = flat.reshape(len(captions), -1, *flat.shape[1:])
    return ClipPool(latents, prompts, captions, torch.cat(objects).to(device))


def _encoded(
    vae: AutoencoderKLWan,
    seeds: list[int],
    render_batch: Callable[[list[int]], Clips],
    progress: bool,
    cache: Path | None,
    key: str,
) -> tuple[list[torch.Tensor], list, list[torch.Tensor]]:
    """Raw latents, captions (each clip's, or its chunks' for switch clips) and object cells of ``seeds``'
    clips: loaded from ``cache`` when kept there under ``key``, else encoded (and kept there)."""
    path = None if cache is None else cache / f"pool-{key}.pt"
    if path is not None and path.is_file():
        stored = torch.load(path, weights_only=True)
        if progress:
            print(f"[pool] {len(stored['captions'])} encoded clips from {path}", file=sys.stderr, flush=True)
        return list(stored["raw"]), list(stored["captions"]), list(stored["objects"])
    raw, captions, objects = _encode_clips(vae, seeds, render_batch, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save({"raw": raw, "captions": captions, "objects": objects}, temporary)
        temporary.replace(path)  # a run killed while writing leaves no truncated pool behind
        if progress:
            print(f"[pool] kept in {path}", file=sys.stderr, flush=True)
    return raw, captions, objects


def _encode_clips(
    vae: AutoencoderKLWan, seeds: list[int], render_batch: Callable[[list[int]], Clips], progress: bool
) -> tuple[list[torch.Tensor], list, list[torch.Tensor]]:
    """Raw latents, captions and object cells of ``seeds``' clips, rendered and encoded ``ENCODE_BATCH`` at a
    time."""
    raw: list[torch.Tensor] = []
    captions: list = []
    objects: list[torch.Tensor] = []
    for first in range(0, len(seeds), ENCODE_BATCH):
        clips = render_batch(seeds[first : first + ENCODE_BATCH])
        raw.append(encode_raw(vae, clips.frames).cpu())
        captions += clips.chunk_captions if clips.chunk_captions is not None else clips.captions
        objects.append(latent_object_cells(clips.objects, vae.config.scale_factor_temporal,
                                           vae.config.scale_factor_spatial))  # fmt: skip
        if progress:
            print(f"[pool] encoded {len(captions)}/{len(seeds)} clips", file=sys.stderr, flush=True)
    return raw, captions, objects


def _pool_key(vae: AutoencoderKLWan, world: WorldSpec, seeds: list[int], frames: int, kind: str = "") -> str:
    """SHA-256 of what an encoded pool depends on (``kind``: what else its clips show, e.g. prompt switches)."""
    # A plain pool's key leaves kind out, so that pools kept before switch clips existed are found again.
    parts = [DATA_VERSION, world.as_dict(), seeds, frames, *([kind] if kind else [])]
    digest = hashlib.sha256(json.dumps(parts).encode())
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
