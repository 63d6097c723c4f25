"""Pixels to the normalised latents the lab transformer works in, and back to the VAE's own scale.

The server decodes transformer output with :class:`tokentrim_server.models.vae.StreamingVaeDecoder`, which
de-normalises per channel with the VAE config's ``latents_mean``/``latents_std`` (``z / (1/std) + mean``).
:func:`encode_frames` is its exact inverse: it takes the posterior mode (the mean: a deterministic encoding,
so one video always has one latent) and normalises it with the same two config lists. The lab writes its own
statistics into those lists (:func:`register_latent_statistics`), so its normalised latents are ~N(0, 1)
per channel, the scale the flow-matching noise assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKLWan

TEMPORAL_SCALE = 4  # Wan 2.1's causal VAE: the first frame alone, then 4 frames per latent frame


def latent_frame_count(video_frames: int) -> int:
    """Latent frames of a ``1 + 4k``-frame video; any other length is an error naming ``frames``."""
    if video_frames < 1 or (video_frames - 1) % TEMPORAL_SCALE:
        raise ValueError(f"frames must hold 1 + {TEMPORAL_SCALE}k video frames; got {video_frames}")
    return 1 + (video_frames - 1) // TEMPORAL_SCALE


def video_frame_count(latent_frames: int) -> int:
    """Video frames ``latent_frames`` latent frames decode to (the inverse of :func:`latent_frame_count`)."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1; got {latent_frames}")
    return 1 + TEMPORAL_SCALE * (latent_frames - 1)


def pixels_to_vae_input(frames: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` or ``[B, T, H, W, 3]`` to the VAE's input ``[B, 3, T, H, W]`` in ``[-1, 1]``.

    The inverse of ``frames_to_uint8`` (``(x + 1) * 127.5``), so a decoded video compares to its source.
    """
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim not in (4, 5) or array.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] or [B, T, H, W, 3]; got {array.dtype} {array.shape}")
    latent_frame_count(array.shape[-4])
    batch = array if array.ndim == 5 else array[None]
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device)
    return (tensor.permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0).contiguous()


@torch.no_grad()
def encode_raw(vae: AutoencoderKLWan, frames: np.ndarray) -> torch.Tensor:
    """Posterior means on the VAE's own scale, float32 ``[B, F, C, h, w]`` (``B = 1`` for ``[T, H, W, 3]``)."""
    x = pixels_to_vae_input(frames, vae.device, vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    return z.permute(0, 2, 1, 3, 4).float()


def _config_tables(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents_mean`` and ``1/latents_std`` shaped ``[1, 1, C, 1, 1]``, computed as the decoder computes them."""
    config = vae.config
    mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, 1, -1, 1, 1)
    inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, 1, -1, 1, 1)
    if mean.shape[2] != like.shape[2]:
        raise ValueError(f"latents have {like.shape[2]} channels; the VAE config has {mean.shape[2]}")
    return mean.to(like.device), inv_std.to(like.device)


def normalise_latents(vae: AutoencoderKLWan, raw: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[B, F, C, h, w]`` to the transformer's scale: ``(z - mean) * (1/std)``."""
    mean, inv_std = _config_tables(vae, raw)
    return (raw.float() - mean) * inv_std


def denormalise_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """The decoder's de-normalisation ``z / (1/std) + mean`` on ``[B, F, C, h, w]`` (for checks and tests)."""
    mean, inv_std = _config_tables(vae, latents)
    return latents.float() / inv_std + mean


def encode_frames(vae: AutoencoderKLWan, frames: np.ndarray) -> torch.Tensor:
    """Normalised latents ``[1, F, C, h, w]`` (float32, on the VAE's device) of uint8 ``[T, H, W, 3]`` frames.

    ``T`` must be ``1 + 4k`` (``F = 1 + k``): Wan's VAE encodes the first frame alone and then groups of four.
    """
    if np.asarray(frames).ndim != 4:
        raise ValueError(f"frames must be uint8 [T, H, W, 3]; got shape {np.asarray(frames).shape}")
    return normalise_latents(vae, encode_raw(vae, frames))


def latent_statistics(latents: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over raw latents ``[B, F, C, h, w]`` (every clip, frame, pixel).

    A channel whose values never vary gets std 1, so normalising it cannot divide by zero.
    """
    if not latents:
        raise ValueError("latents must not be empty")
    values = torch.cat([z.float().permute(2, 0, 1, 3, 4).flatten(1) for z in latents], dim=1).double()
    mean = values.mean(dim=1)
    std = values.std(dim=1, correction=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def register_latent_statistics(vae: AutoencoderKLWan, mean: Sequence[float], std: Sequence[float]) -> None:
    """Write the statistics into the VAE config, where the server's decoder reads them when it de-normalises."""
    channels = vae.config.z_dim
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"latent statistics need {channels} values each; got mean {len(mean)}, std {len(std)}")
    if any(not value > 0 for value in std):
        raise ValueError(f"latents_std must be positive; got {list(std)}")
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])
