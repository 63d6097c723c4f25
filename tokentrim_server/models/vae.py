"""Streaming decode of Wan 2.1 latents into pixels, chunk by chunk, on diffusers' ``AutoencoderKLWan``.

The Wan VAE decoder is causal in time: diffusers already decodes one latent frame at a time and carries
the last ``CACHE_T`` frames of every causal convolution's input in a feature cache (``_feat_map``). A
whole-video decode clears that cache at its start and end, so decoding a stream piecewise with
``vae.decode`` would restart the causal context at every chunk (flicker, and a wrong frame count). Here the
same decoder modules run with a feature cache owned by the stream and kept between chunks, which makes
chunked decoding give exactly the frames of one decode of the whole latent video.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode one chunk of normalised latents ``[B, F, C, h, w]`` (as the transformer produces them)."""
        return decode_together([DecodeCall(self, latents)])[0]

    def state_key(self) -> tuple:
        """The shape of the causal context: decoders with equal keys can decode their next chunks batched."""
        entries = tuple(tuple(item.shape[1:]) if isinstance(item, torch.Tensor) else item for item in self._feat_cache)
        return self._latent_frames_decoded == 0, entries

    def _check(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, F, C, H, W], got shape {tuple(latents.shape)}")
        batch, _, channels, _, _ = latents.shape
        expected_channels = self._latents_mean.shape[1]
        if channels != expected_channels:
            raise ValueError(f"latents have {channels} channels, the VAE expects {expected_channels}")
        if self._batch_size is not None and batch != self._batch_size:
            raise ValueError(f"batch size changed from {self._batch_size} to {batch} within one stream")

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor, feat_cache: list[torch.Tensor | str | None]) -> torch.Tensor:
        """Frames of ``latents`` (one or several streams' chunks, stacked), carrying ``feat_cache`` on."""
        z = self._denormalise(latents.permute(0, 2, 1, 3, 4))
        x = self.vae.post_quant_conv(z)
        outputs = []
        for index in range(x.shape[2]):
            outputs.append(
                self.vae.decoder(
                    x[:, :, index : index + 1],
                    feat_cache=feat_cache,
                    # A fresh index per frame: the decoder walks its convolutions in order from slot 0.
                    feat_idx=[0],
                    first_chunk=self._latent_frames_decoded + index == 0,
                )
            )
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


@dataclass(frozen=True)
class DecodeCall:
    """One stream's chunk to decode, with that stream's decoder (its causal context)."""

    decoder: StreamingVaeDecoder
    latents: torch.Tensor  # [B, F, C, h, w]

    @property
    def batch_key(self) -> tuple:
        """Calls with equal keys decode as one batch: same chunk shape, and causal contexts of the same shape."""
        latents = self.latents
        return tuple(latents.shape), latents.dtype, latents.device, self.decoder.vae, self.decoder.state_key()


def decode_together(calls: list[DecodeCall]) -> list[torch.Tensor]:
    """Decode several streams' chunks of one :attr:`DecodeCall.batch_key` as one batch; each decoder's causal
    context is stacked for the batch and split back after it, so each stream continues as if decoded alone."""
    if len({call.batch_key for call in calls}) != 1:
        raise ValueError("chunks decoded together need one shape and causal contexts of one shape")
    for call in calls:
        call.decoder._check(call.latents)
    rows = [call.latents.shape[0] for call in calls]
    decoders = [call.decoder for call in calls]
    contexts = [decoder._feat_cache for decoder in decoders]
    # One stream alone decodes on its own context (no copy); several on their contexts stacked.
    feat_cache = contexts[0] if len(calls) == 1 else [_stack(entries) for entries in zip(*contexts, strict=True)]
    frames = decoders[0]._decode(torch.cat([call.latents for call in calls]), feat_cache)
    for number, (decoder, batch) in enumerate(zip(decoders, rows, strict=True)):
        if len(calls) > 1:
            start = sum(rows[:number])
            decoder._feat_cache = [
                item[start : start + batch] if isinstance(item, torch.Tensor) else item for item in feat_cache
            ]
        decoder._batch_size = batch
        decoder._latent_frames_decoded += calls[number].latents.shape[1]
    return list(frames.split(rows))


def _stack(entries: tuple[torch.Tensor | str | None, ...]) -> torch.Tensor | str | None:
    """One causal-context slot of several streams: their tensors stacked on the batch (others are equal)."""
    return torch.cat(entries) if isinstance(entries[0], torch.Tensor) else entries[0]


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
