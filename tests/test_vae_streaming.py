"""Streaming VAE decode must reproduce a single decode of the whole latent video."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from tokentrim_server.models.tiny import build_tiny_components
from tokentrim_server.models.vae import StreamingVaeDecoder, frames_to_uint8


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    return build_tiny_components(seed=0).vae


def _random_latents(num_frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, num_frames, 16, 4, 6, generator=torch.Generator().manual_seed(seed))


def _whole_decode(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Reference path: de-normalise as diffusers' WanPipeline does, then one ``vae.decode``."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = latents.permute(0, 2, 1, 3, 4) / inv_std + mean
    with torch.no_grad():
        return vae.decode(z).sample.permute(0, 2, 1, 3, 4)


def test_chunked_decode_equals_whole_decode(vae: AutoencoderKLWan) -> None:
    latents = _random_latents(9)
    decoder = StreamingVaeDecoder(vae)
    chunks = [decoder.decode_chunk(latents[:, start : start + 3]) for start in range(0, 9, 3)]

    assert [chunk.shape[1] for chunk in chunks] == [9, 12, 12]
    assert chunks[0].shape[2:] == (3, 32, 48)
    whole = _whole_decode(vae, latents)
    assert whole.shape[1] == 33
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-5, rtol=0)
    assert decoder.latent_frames_decoded == 9


def test_cache_carries_context_and_reset_forgets_it(vae: AutoencoderKLWan) -> None:
    latents = _random_latents(6, seed=2)
    decoder = StreamingVaeDecoder(vae)
    first = decoder.decode_chunk(latents[:, :3])
    second = decoder.decode_chunk(latents[:, 3:])
    decoder.reset()
    # Without the causal context the same latents decode as a fresh video: different, and fewer, frames.
    restarted = decoder.decode_chunk(latents[:, 3:])
    assert restarted.shape[1] == 9 and second.shape[1] == 12
    assert not torch.allclose(restarted, second[:, 3:])
    decoder.reset()
    torch.testing.assert_close(decoder.decode_chunk(latents[:, :3]), first, atol=0, rtol=0)


def test_batch_size_must_not_change_within_a_stream(vae: AutoencoderKLWan) -> None:
    decoder = StreamingVaeDecoder(vae)
    decoder.decode_chunk(_random_latents(1))
    with pytest.raises(ValueError, match="batch size"):
        decoder.decode_chunk(torch.zeros(2, 1, 16, 4, 6))
    with pytest.raises(ValueError, match="channels"):
        decoder.decode_chunk(torch.zeros(1, 1, 8, 4, 6))


def test_frames_to_uint8_maps_range_and_layout() -> None:
    frames = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1, 1).expand(1, 4, 3, 2, 5)
    pixels = frames_to_uint8(frames)
    assert pixels.dtype == torch.uint8
    assert pixels.shape == (1, 4, 2, 5, 3)
    assert pixels[0, :, 0, 0, 0].tolist() == [0, 128, 255, 255]
