"""Rotary position embedding at an absolute latent-frame offset, for any offset.

diffusers' ``WanRotaryPosEmbed`` always numbers frames from 0; a causal chunk must be rotated at the
absolute index of its first latent frame so that cached keys and new queries agree on where they sit in
time. The frequency tables are diffusers' own (the same buffers the base model holds); only the time axis
slice moves.

Streams have no end, so the time axis has no end either: rows past the model's table (``rope_max_seq_len``,
1024 frames for Wan 2.1) are computed on demand exactly as diffusers computes the table (float64 angles,
then cos/sin, then float32), so a row is bit-identical to the one a model built with a longer table holds.
Rotary attention depends only on position differences and every angle is computed afresh in float64, so a
stream at frame 100,000 rotates with the same precision as one at frame 10: nothing is re-rotated, nothing
accumulates. (What does change past the training horizon is the model's own view, e.g. the distance to a
Self Forcing sink; Rolling Forcing re-places its sink next to the window.)
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's default, which WanTransformer3DModel uses


class FrameRope:
    """Builds rotary tables for a chunk of ``num_frames`` latent frames starting at ``frame_start``."""

    def __init__(self, rope: WanRotaryPosEmbed) -> None:
        self.table_frames = rope.max_seq_len
        self.t_dim = rope.t_dim
        split = [rope.t_dim, rope.h_dim, rope.w_dim]
        # Float32 is enough: the reference's float64 RoPE differs by ~1e-7 and bf16 runs never see float64.
        self._cos = [t.float() for t in rope.freqs_cos.split(split, dim=1)]
        self._sin = [t.float() for t in rope.freqs_sin.split(split, dim=1)]
        # The rows computed past the table must be the table's continuation: check the formula on its start
        # (exactly for a float32 table; a bf16 model's table was rounded to bf16, so to within that rounding).
        probe = min(8, self.table_frames)
        tolerance = 0.0 if rope.freqs_cos.dtype == torch.float32 else 2 * torch.finfo(rope.freqs_cos.dtype).eps
        cos, sin = self._computed_time_rows(0, probe)
        for computed, table in ((cos, self._cos[0][:probe].cpu()), (sin, self._sin[0][:probe].cpu())):
            if not torch.allclose(computed, table, rtol=0, atol=tolerance):
                raise ValueError("the model's rotary table is not Wan's (theta 10000): cannot extend it past its end")

    def tables(
        self, frame_start: int, num_frames: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos/sin tables ``[1, num_frames*height*width, 1, head_dim]`` for a token grid."""
        if frame_start < 0 or num_frames <= 0:
            raise ValueError(f"latent frames must start at >= 0 and number > 0; got {frame_start}, {num_frames}")
        time_cos, time_sin = self._time_rows(frame_start, num_frames)
        return (
            self._grid(time_cos, self._cos, num_frames, height, width).to(device),
            self._grid(time_sin, self._sin, num_frames, height, width).to(device),
        )

    def _time_rows(self, frame_start: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = frame_start + num_frames
        if end <= self.table_frames:
            return self._cos[0][frame_start:end], self._sin[0][frame_start:end]
        return self._computed_time_rows(frame_start, num_frames)

    def _computed_time_rows(self, frame_start: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(frame_start, frame_start + num_frames)
        return get_1d_rotary_pos_embed(
            self.t_dim, positions, ROPE_THETA, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64
        )

    @staticmethod
    def _grid(
        time_part: torch.Tensor, parts: list[torch.Tensor], nf: int, h: int, w: int
    ) -> torch.Tensor:
        _, h_part, w_part = parts
        grid = torch.cat(
            [
                time_part.to(h_part.device).view(nf, 1, 1, -1).expand(nf, h, w, -1),
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
