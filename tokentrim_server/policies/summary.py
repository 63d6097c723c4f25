"""The latent summary the engine hands policies: one vector per KV-cache token position of a frame."""

from __future__ import annotations

import torch


def latent_summary(latents: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Mean over a chunk's frames of its patchified latent: ``[B, F, C, H, W]`` -> ``[N, D]``.

    Tokens are numbered row-major over the (h, w) patch grid, as the transformer's patch embedding flattens
    them, so token ``i`` of the summary is token position ``i`` of every cached frame and a policy can hand
    summary indices straight to :meth:`CacheHandle.remove_positions`. ``D = B * C * pt * ph * pw``: the
    batch is folded into the features because the cache removes a position from every batch row at once.
    Computed in float32 whatever the model dtype.
    """
    batch, frames, channels, height, width = latents.shape
    pt, ph, pw = patch_size
    if frames % pt or height % ph or width % pw:
        raise ValueError(f"latents {tuple(latents.shape)} do not tile into patches {patch_size}")
    x = latents.float().reshape(batch, frames // pt, pt, channels, height // ph, ph, width // pw, pw)
    # -> [F', h, w, B, pt, C, ph, pw]: one row per (frame, token), features last.
    x = x.permute(1, 4, 6, 0, 2, 3, 5, 7).reshape(frames // pt, (height // ph) * (width // pw), -1)
    return x.mean(dim=0)
