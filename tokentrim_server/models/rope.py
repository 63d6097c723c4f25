"""Rotary position embedding at an absolute latent-frame offset.

diffusers' ``WanRotaryPosEmbed`` always numbers frames from 0; a causal chunk must be rotated at the
absolute index of its first latent frame so that cached keys and new queries agree on where they sit in
time. The frequency tables are diffusers' own (the same buffers the base model holds); only the time axis
slice moves.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed


class FrameRope:
    """Builds rotary tables for a chunk of ``num_frames`` latent frames starting at ``frame_start``."""

    def __init__(self, rope: WanRotaryPosEmbed) -> None:
        self.max_frames = rope.max_seq_len
        split = [rope.t_dim, rope.h_dim, rope.w_dim]
        # Float32 is enough: the reference's float64 RoPE differs by ~1e-7 and bf16 runs never see float64.
        self._cos = [t.float() for t in rope.freqs_cos.split(split, dim=1)]
        self._sin = [t.float() for t in rope.freqs_sin.split(split, dim=1)]

    def tables(
        self, frame_start: int, num_frames: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos/sin tables ``[1, num_frames*height*width, 1, head_dim]`` for a token grid."""
        if frame_start < 0 or frame_start + num_frames > self.max_frames:
            raise ValueError(
                f"latent frames {frame_start}..{frame_start + num_frames - 1} exceed the rotary table "
                f"({self.max_frames} frames)"
            )
        return (
            self._grid(self._cos, frame_start, num_frames, height, width).to(device),
            self._grid(self._sin, frame_start, num_frames, height, width).to(device),
        )

    @staticmethod
    def _grid(parts: list[torch.Tensor], f0: int, nf: int, h: int, w: int) -> torch.Tensor:
        t_part, h_part, w_part = parts
        grid = torch.cat(
            [
                t_part[f0 : f0 + nf].view(nf, 1, 1, -1).expand(nf, h, w, -1),
                h_part[:h].view(1, h, 1, -1).expand(nf, h, w, -1),
                w_part[:w].view(1, 1, w, -1).expand(nf, h, w, -1),
            ],
            dim=-1,
        )
        return grid.reshape(1, nf * h * w, 1, -1)


def apply_rotary(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``[B, tokens, heads, head_dim]`` (Wan's complex layout)."""
    cos, sin = tables
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)
