"""Noise addressed by key, not by draw order.

A pipeline asks for "the initial noise of block b" and "the noise that renoises block b to step s".
The seeded source derives each tensor from (seed, kind, block, step) alone, so the same seed gives the
same video however chunks are scheduled, batched or regenerated; the replay source serves the noise an
official run recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

import torch


class NoiseSource(Protocol):
    def initial(self, block: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Pure noise a block starts from."""
        ...

    def renoise(
        self, block: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Noise that brings block ``block``'s clean prediction to denoising step ``step`` (1-based)."""
        ...


class SeededNoise:
    """Counter-based Gaussian noise: each (block, step) key seeds its own generator."""

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63); got {seed}")
        self.seed = seed

    def _draw(self, key: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        # Drawn on the CPU in float32 so CPU and GPU sessions with one seed start from the same noise.
        if device.type != "cuda":
            return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        # Into pinned memory (the same numbers: randn is normal_ on a new tensor) and copied without blocking:
        # a pageable copy would stop the host until the GPU drained its queue, at every denoising step. The
        # caching host allocator keeps the pinned block until the copy has run.
        host = torch.empty(shape, pin_memory=True).normal_(generator=generator)
        return host.to(device=device, non_blocking=True).to(dtype)

    def initial(self, block: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._draw(f"initial.{block}", shape, device, dtype)

    def renoise(
        self, block: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return self._draw(f"renoise.{block}.{step}", shape, device, dtype)


class ReplayNoise:
    """Noise recorded from another run, keyed ``noise.initial.{b}`` and ``noise.renoise.{b}.{s}``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def _get(self, key: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if key not in self._tensors:
            raise KeyError(f"replayed noise has no tensor {key!r}")
        tensor = self._tensors[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"replayed noise {key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        return tensor.to(device=device, dtype=dtype)

    def initial(self, block: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._get(f"noise.initial.{block}", shape, device, dtype)

    def renoise(
        self, block: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return self._get(f"noise.renoise.{block}.{step}", shape, device, dtype)
