"""Streaming decode of Wan 2.1 latents into pixels, chunk by chunk, on diffusers' ``AutoencoderKLWan``.

The Wan VAE decoder is causal in time: diffusers already decodes one latent frame at a time and carries
the last ``CACHE_T`` frames of every causal convolution's input in a feature cache (``_feat_map``). A
whole-video decode clears that cache at its start and end, so decoding a stream piecewise with
``vae.decode`` would restart the causal context at every chunk (flicker, and a wrong frame count). Here the
same decoder modules run with a feature cache owned by the stream and kept between chunks, which makes
chunked decoding give exactly the frames of one decode of the whole latent video.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify


class StreamingVaeDecoder:
    """Decode normalised latent chunks ``[B, F, C, h, w]`` into frames ``[B, T, 3, H, W]`` in ``[-1, 1]``.

    The first chunk of a stream gives ``1 + 4 * (F - 1)`` frames (the VAE's first latent frame encodes a
    single image), later chunks ``4 * F`` (for the 4x temporal compression of Wan 2.1).
    Call :meth:`reset` before each new video.
    """

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.vae = vae
        config = vae.config
        # Kept in float32 on CPU and copied where the VAE runs (once per device and dtype, see _denormalise),
        # so the decoder can change device or dtype later.
        self._latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        # Stored as 1/std and divided by, exactly as diffusers' WanPipeline de-normalises, so both paths
        # round the same way.
        latents_std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latents_inv_std = 1.0 / latents_std
        self._statistics_at: tuple[torch.device, torch.dtype, torch.Tensor, torch.Tensor] | None = None
        self._num_convs = sum(isinstance(module, WanCausalConv3d) for module in vae.decoder.modules())
        self._feat_cache: list[torch.Tensor | str | None] = []
        self._batch_size: int | None = None
        self._latent_frames_decoded = 0
        self.reset()

    @property
    def latent_frames_decoded(self) -> int:
        """Latent frames decoded since the last :meth:`reset`."""
        return self._latent_frames_decoded

    def to(self, device: torch.device) -> None:
        """Move the causal context to ``device`` (the VAE itself stays where it is)."""
        self._feat_cache = [item.to(device) if isinstance(item, torch.Tensor) else item for item in self._feat_cache]

    def reset(self) -> None:
        """Forget the causal context, so the next chunk starts a new video."""
        self._feat_cache = [None] * self._num_convs
        self._batch_size = None
        self._latent_frames_decoded = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode one chunk of normalised latents ``[B, F, C, h, w]`` (as the transformer produces them)."""
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, F, C, H, W], got shape {tuple(latents.shape)}")
        batch, _, channels, _, _ = latents.shape
        expected_channels = self._latents_mean.shape[1]
        if channels != expected_channels:
            raise ValueError(f"latents have {channels} channels, the VAE expects {expected_channels}")
        if self._batch_size is not None and batch != self._batch_size:
            raise ValueError(f"batch size changed from {self._batch_size} to {batch} within one stream")
        self._batch_size = batch

        z = self._denormalise(latents.permute(0, 2, 1, 3, 4))
        x = self.vae.post_quant_conv(z)
        outputs = []
        for index in range(x.shape[2]):
            outputs.append(
                self.vae.decoder(
                    x[:, :, index : index + 1],
                    feat_cache=self._feat_cache,
                    # A fresh index per frame: the decoder walks its convolutions in order from slot 0.
                    feat_idx=[0],
                    first_chunk=self._latent_frames_decoded == 0,
                )
            )
            self._latent_frames_decoded += 1
        frames = torch.cat(outputs, dim=2)
        if self.vae.config.patch_size is not None:
            frames = unpatchify(frames, patch_size=self.vae.config.patch_size)
        return frames.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Undo the per-channel latent normalisation the transformer was trained in (``[B, C, F, h, w]``)."""
        z = z.to(device=self.vae.device, dtype=self.vae.dtype)
        # A host-to-device copy from pageable memory blocks until the stream gets there: do it once, not per chunk.
        if self._statistics_at is None or self._statistics_at[:2] != (z.device, z.dtype):
            inv_std = self._latents_inv_std.to(device=z.device, dtype=z.dtype)
            mean = self._latents_mean.to(device=z.device, dtype=z.dtype)
            self._statistics_at = (z.device, z.dtype, inv_std, mean)
        _, _, inv_std, mean = self._statistics_at
        return z / inv_std + mean


def video_frame_count(vae: AutoencoderKLWan, latent_frames: int, first: bool) -> int:
    """Video frames decoded from a chunk of ``latent_frames``: the VAE's first latent frame is one image, each
    later one ``2 ** (temporal downsamplings)`` frames (4 for Wan 2.1)."""
    ratio = 2 ** sum(vae.config.temperal_downsample)
    return 1 + ratio * (latent_frames - 1) if first else ratio * latent_frames


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Map decoded frames ``[B, T, 3, H, W]`` in ``[-1, 1]`` to ``uint8`` ``[B, T, H, W, 3]`` for video."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, T, 3, H, W], got shape {tuple(frames.shape)}")
    pixels = ((frames.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 1, 3, 4, 2).contiguous()
