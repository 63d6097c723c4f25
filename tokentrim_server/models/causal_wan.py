"""Block-causal forward over the modules of a diffusers ``WanTransformer3DModel``.

The base model's own ``forward`` attends over one whole clip with a single timestep. Autoregressive
pipelines (Self Forcing, Rolling Forcing) need three things it lacks, added here around the very same
modules and weights:

* per-latent-frame timesteps ``[B, F]`` and per-frame modulation;
* rotary embedding taken at the chunk's absolute latent-frame index;
* self-attention of the chunk over keys supplied by the pipeline's cache (an :class:`AttentionContext`),
  and cross-attention over text K/V computed once per session (:class:`TextContext`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import WanTransformer3DModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokentrim_server.models.attention import attention_function, resolve_backend
from tokentrim_server.models.rope import FrameRope, apply_rotary

Tables = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ChunkGeometry:
    """Where a chunk's tokens sit: ``num_frames`` latent frames from absolute frame ``frame_start``."""

    frame_start: int
    num_frames: int
    height: int  # in tokens (latent height / patch)
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


class AttentionContext(Protocol):
    """Supplies the keys and values a chunk's self-attention sees, layer by layer.

    ``k`` arrives after q/k-norm and *before* RoPE, so a context can store it roped (the usual case) or
    un-roped (an attention sink that is re-rotated at each use).
    """

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TextContext:
    """Cross-attention K/V of one prompt for every layer, computed once per session."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys = keys
        self.values = values

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class CausalWanTransformer(nn.Module):
    """A ``WanTransformer3DModel`` run chunk by chunk against a KV cache."""

    def __init__(self, base: WanTransformer3DModel, text_len: int = 512, attention_backend: str = "sdpa") -> None:
        super().__init__()
        # The engine never trains: frozen parameters make a session hook's gradient reach the latent alone.
        self.base = base.requires_grad_(False)
        self.text_len = text_len
        self.rope = FrameRope(base.rope)
        self.set_attention_backend(attention_backend)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.base.config

    @property
    def num_layers(self) -> int:
        return len(self.base.blocks)

    @property
    def num_heads(self) -> int:
        return self.base.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.base.config.attention_head_dim

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.base.config.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.base.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.base.patch_embedding.weight.device

    def set_attention_backend(self, name: str) -> None:
        self.attention_backend = resolve_backend(name, self.device)
        self._attend = attention_function(self.attention_backend)

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        _, ph, pw = self.patch_size
        return (latent_height // ph) * (latent_width // pw)

    def kv_bytes_per_token(self, batch: int = 1, dtype: torch.dtype | None = None) -> int:
        """Bytes of K and V one cached token costs over all layers."""
        itemsize = torch.empty(0, dtype=dtype or self.dtype).element_size()
        return 2 * self.num_layers * batch * self.num_heads * self.head_dim * itemsize

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompt_embeds: torch.Tensor) -> TextContext:
        """Embed ``prompt_embeds`` ``[B, L, text_dim]`` and project it to every layer's cross-attention K/V.

        The prompt is zero-padded to ``text_len`` and attended without a mask, as the official code does:
        the padding rows pass through the text embedder like real tokens.
        """
        batch, length, dim = prompt_embeds.shape
        if length > self.text_len:
            raise ValueError(f"prompt has {length} tokens; the model's text_len is {self.text_len}")
        padded = prompt_embeds.new_zeros(batch, self.text_len, dim)
        padded[:, :length] = prompt_embeds
        context = self.base.condition_embedder.text_embedder(padded.to(self.dtype))
        keys, values = [], []
        for block in self.base.blocks:
            attn = block.attn2
            keys.append(attn.norm_k(attn.to_k(context)).unflatten(2, (self.num_heads, -1)))
            values.append(attn.to_v(context).unflatten(2, (self.num_heads, -1)))
        return TextContext(keys, values)

    # ------------------------------------------------------------------ forward
    def geometry(self, latents: torch.Tensor, frame_start: int) -> ChunkGeometry:
        pt, ph, pw = self.patch_size
        _, frames, _, height, width = latents.shape
        return ChunkGeometry(frame_start, frames // pt, height // ph, width // pw)

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: TextContext,
        context: AttentionContext,
        frame_start: int,
        gradient_checkpointing: bool = False,
    ) -> torch.Tensor:
        """Predict the flow of a chunk.

        Args:
            latents: ``[B, F, C, H, W]`` noisy latents of the chunk.
            timesteps: ``[B, F]`` per-frame timesteps on the 1000 scale.
            text: the session's cross-attention K/V.
            context: where self-attention keys come from (the session's cache).
            frame_start: absolute latent-frame index of the chunk's first frame.
            gradient_checkpointing: when autograd records the call, keep only each transformer block's input
                and recompute the block in the backward pass (the context must then be free of side effects,
                as it is called again). Without grad mode the flag changes nothing.

        Returns:
            ``[B, F, C, H, W]`` flow prediction.
        """
        base = self.base
        geo = self.geometry(latents, frame_start)
        batch, frames = timesteps.shape
        hidden = base.patch_embedding(latents.permute(0, 2, 1, 3, 4).to(self.dtype))
        hidden = hidden.flatten(2).transpose(1, 2).contiguous()
        rope = self.rotary(geo, hidden.device)

        embedder = base.condition_embedder
        t_freq = embedder.timesteps_proj(timesteps.flatten())
        t_freq = t_freq.to(next(embedder.time_embedder.parameters()).dtype)
        temb = embedder.time_embedder(t_freq).type_as(hidden)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1)).unflatten(0, (batch, frames))
        temb = temb.unflatten(0, (batch, frames))

        checkpointed = gradient_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(base.blocks):
            if checkpointed:
                hidden = checkpoint(
                    self._block, index, block, hidden, modulation, text, context, rope, use_reentrant=False
                )
            else:
                hidden = self._block(index, block, hidden, modulation, text, context, rope)

        shift, scale = (base.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        hidden = _modulate(base.norm_out(hidden.float()), frames, shift, scale).type_as(hidden)
        hidden = base.proj_out(hidden)
        return self._unpatchify(hidden, geo, batch)

    def _block(
        self,
        index: int,
        block: nn.Module,
        hidden: torch.Tensor,
        modulation: torch.Tensor,
        text: TextContext,
        context: AttentionContext,
        rope: Tables,
    ) -> torch.Tensor:
        frames = modulation.shape[1]
        params = (block.scale_shift_table.unsqueeze(0) + modulation.float()).chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = params

        # 1. Self-attention over [context keys; own keys].
        attn = block.attn1
        normed = _modulate(block.norm1(hidden.float()), frames, shift_msa, scale_msa).type_as(hidden)
        q = attn.norm_q(attn.to_q(normed)).unflatten(2, (self.num_heads, -1))
        k = attn.norm_k(attn.to_k(normed)).unflatten(2, (self.num_heads, -1))
        v = attn.to_v(normed).unflatten(2, (self.num_heads, -1))
        keys, values = context.keys_values(index, k, v)
        out = attn.to_out[0](self._attend(apply_rotary(q, rope), keys, values).flatten(2))
        hidden = (hidden.float() + _gate(out, frames, gate_msa)).type_as(hidden)

        # 2. Cross-attention to the prompt (cached K/V).
        cross = block.attn2
        normed = block.norm2(hidden.float()).type_as(hidden)
        q = cross.norm_q(cross.to_q(normed)).unflatten(2, (self.num_heads, -1))
        out = self._attend(q, text.keys[index], text.values[index]).flatten(2)
        hidden = hidden + cross.to_out[0](out)

        # 3. Feed-forward.
        normed = _modulate(block.norm3(hidden.float()), frames, shift_ffn, scale_ffn).type_as(hidden)
        out = block.ffn(normed)
        return (hidden.float() + _gate(out.float(), frames, gate_ffn)).type_as(hidden)

    def rotary(self, geo: ChunkGeometry, device: torch.device) -> Tables:
        return self.rope.tables(geo.frame_start, geo.num_frames, geo.height, geo.width, device)

    def _unpatchify(self, hidden: torch.Tensor, geo: ChunkGeometry, batch: int) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        hidden = hidden.reshape(batch, geo.num_frames, geo.height, geo.width, pt, ph, pw, -1)
        # -> [B, F, pt, C, H, ph, W, pw]
        hidden = hidden.permute(0, 1, 4, 7, 2, 5, 3, 6)
        frames = geo.num_frames * pt
        return hidden.reshape(batch, frames, -1, geo.height * ph, geo.width * pw)


def _modulate(normed: torch.Tensor, frames: int, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-frame adaptive norm: ``normed`` ``[B, F*n, D]``, shift/scale ``[B, F, 1, D]``."""
    return (normed.unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2)


def _gate(update: torch.Tensor, frames: int, gate: torch.Tensor) -> torch.Tensor:
    return (update.unflatten(1, (frames, -1)) * gate).flatten(1, 2)

