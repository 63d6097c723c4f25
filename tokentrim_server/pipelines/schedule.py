"""Few-step flow-matching schedules, as the official distilled pipelines build them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000


def denoising_timesteps(steps: Sequence[int], shift: float, warp: bool = True) -> list[float]:
    """Timesteps (1000 scale) of a step list such as ``[1000, 750, 500, 250]``.

    With ``warp`` each step ``s`` is read off the shifted 1000-point training grid, i.e.
    ``sigma = shift*u / (1 + (shift-1)*u)`` with ``u = s/1000``; computed in float32 on the same grid as
    the official ``FlowMatchScheduler`` so the values agree bit for bit (937.5, 833.3333, ...).
    """
    if not steps:
        raise ValueError("denoising_steps must not be empty")
    for step in steps:
        if not 0 < step <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"denoising_steps entries must be in (0, {NUM_TRAIN_TIMESTEPS}]; got {step}")
    if list(steps) != sorted(steps, reverse=True) or len(set(steps)) != len(steps):
        raise ValueError(f"denoising_steps must be strictly decreasing; got {list(steps)}")
    if not warp:
        return [float(s) for s in steps]
    if shift <= 0:
        raise ValueError(f"timestep_shift must be > 0; got {shift}")
    grid = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1]
    grid = shift * grid / (1 + (shift - 1) * grid) * NUM_TRAIN_TIMESTEPS
    return [grid[NUM_TRAIN_TIMESTEPS - s].item() for s in steps]


def sigma_of(timestep: float) -> float:
    return timestep / NUM_TRAIN_TIMESTEPS


def to_x0(noisy: torch.Tensor, flow: torch.Tensor, timestep: float) -> torch.Tensor:
    """Clean prediction from a flow prediction: ``x0 = x_t - sigma * v``."""
    return (noisy.float() - sigma_of(timestep) * flow.float()).to(noisy.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timestep: float) -> torch.Tensor:
    """Bring a clean prediction back to ``timestep``: ``(1 - sigma) x0 + sigma * noise``."""
    sigma = sigma_of(timestep)
    return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)
