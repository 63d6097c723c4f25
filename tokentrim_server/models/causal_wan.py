"""Block-causal forward over the modules of a diffusers ``WanTransformer3DModel``.

The base model's own ``forward`` attends over one whole clip with a single timestep. Autoregressive
pipelines (Self Forcing, Rolling Forcing) need three things it lacks, added here around the very same
modules and weights:

* per-latent-frame timesteps ``[B, F]`` and per-frame modulation;
* rotary embedding taken at the chunk's absolute latent-frame index;
* self-attention of the chunk over keys supplied by the pipeline's cache (an :class:`AttentionContext`),
  and cross-attention over text K/V computed once per session (:class:`TextContext`).

A block runs as pure tensor functions (:func:`block_qkv`, then self-attention, then :func:`block_finish`)
around the context's cache write, so the optional ``torch.compile`` path (``compile=True``, see :mod:`.compile`)
compiles exactly the arithmetic the eager reference path runs.

Several sessions' calls of the same input shape run as one batched call (:meth:`CausalWanTransformer.forward_many`,
used by the engine's scheduler): patch embedding, modulation, norms, linear layers, cross-attention and FFN
run over every session's tokens together; self-attention runs per session, over the keys its own context
(its own KV cache) supplies, at its own RoPE position. A call alone is the batch of one: there is one code
path, so a batched call and the same call alone differ only by the rounding of batched matrix products.
``tt::`` profiler ranges mark the attention kernels and the cache step for ``benchmarks/profile_chunk.py``;
they cost one flag check when no profiler is active.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from diffusers import WanTransformer3DModel
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from tokentrim_server.models.attention import AttentionFn, attention_function, resolve_backend
from tokentrim_server.models.compile import DynamicCompiled, compile_unavailable_reason
from tokentrim_server.models.rope import FrameRope, apply_rotary

Tables = tuple[torch.Tensor, torch.Tensor]
Modulation = tuple[torch.Tensor, ...]  # shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn
# Rotary tables kept per chunk geometry: every call of a chunk (4 denoising steps + the cache write) and its
# context reuse one pair instead of rebuilding it on the host and copying it to the device each time.
ROTARY_CACHE_SIZE = 8


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

    def to(self, device: torch.device) -> None:
        """Move every layer's K/V to ``device`` (a held session parks them off the accelerator)."""
        self.keys[:] = [key.to(device) for key in self.keys]
        self.values[:] = [value.to(device) for value in self.values]


@dataclass(frozen=True)
class ModelCall:
    """One session's model call: the arguments of :meth:`CausalWanTransformer.forward`."""

    latents: torch.Tensor  # [B, F, C, H, W]
    timesteps: torch.Tensor  # [B, F]
    text: TextContext
    context: AttentionContext
    frame_start: int

    @property
    def batch_key(self) -> tuple:
        """Calls with equal keys can run as one batched call (per-frame timesteps may differ)."""
        return (tuple(self.latents.shape), self.latents.dtype, self.latents.device, tuple(self.text.keys[0].shape))


class CausalWanTransformer(nn.Module):
    """A ``WanTransformer3DModel`` run chunk by chunk against a KV cache."""

    def __init__(
        self,
        base: WanTransformer3DModel,
        text_len: int = 512,
        attention_backend: str = "sdpa",
        compile: bool = False,
    ) -> None:
        super().__init__()
        # The engine never trains: frozen parameters make a session hook's gradient reach the latent alone.
        self.base = base.requires_grad_(False)
        self.text_len = text_len
        self.rope = FrameRope(base.rope)
        self._rotary_cache: OrderedDict[tuple, Tables] = OrderedDict()
        self.set_attention_backend(attention_backend)
        self.set_compile(compile)

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
        # The eager path's kernels inside profiler ranges (built once, not per call).
        self._attend_self = _ranged("tt::self_attention", self._attend)
        self._attend_cross = _ranged("tt::cross_attention", self._attend)

    def set_compile(self, enabled: bool) -> None:
        """Run no-grad block calls through ``torch.compile`` (``True``) or eagerly (``False``, the reference).

        Calls under grad mode (session hooks) always run eagerly. Raises ``ValueError`` when inductor cannot
        run on the model's device here.
        """
        self.compiled = bool(enabled)
        self._compiled_qkv = self._compiled_finish = None
        if not enabled:
            return
        reason = compile_unavailable_reason(self.device)
        if reason is not None:
            raise ValueError(f"compile is not available on {self.device.type}: {reason}")
        # Self-attention runs eagerly between the two (per session, over keys whose length changes chunk by chunk,
        # or when a policy prunes), so neither compiled function sees a cache length; a new batch size (sessions
        # batched together) recompiles once, after which dynamo treats the batch as dynamic.
        self._compiled_qkv = DynamicCompiled(block_qkv, dynamic_args=())
        self._compiled_finish = DynamicCompiled(block_finish, dynamic_args=())

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
        return self.text_context(prompt_embeds)

    def text_context(self, prompt_embeds: torch.Tensor) -> TextContext:
        """:meth:`encode_text` under the caller's grad mode (training reaches the text embedder through it)."""
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
        return self.forward_many([ModelCall(latents, timesteps, text, context, frame_start)], gradient_checkpointing)[0]

    def forward_many(self, calls: list[ModelCall], gradient_checkpointing: bool = False) -> list[torch.Tensor]:
        """Run several sessions' calls of one :attr:`ModelCall.batch_key` as one batched call; returns each flow.

        Each call's self-attention reads and writes only its own context, in the order of ``calls``.
        """
        keys = {call.batch_key for call in calls}
        if len(keys) != 1:
            raise ValueError(
                f"calls batched together need one input shape, dtype and device; got {sorted(map(str, keys))}"
            )
        with _profile_range("tt::transformer"):
            flow = self._forward(calls, gradient_checkpointing)
        return list(flow.split([call.latents.shape[0] for call in calls]))

    @torch.no_grad()
    def forward_many_no_grad(self, calls: list[ModelCall]) -> list[torch.Tensor]:
        """:meth:`forward_many` without autograd (the serving path)."""
        return self.forward_many(calls)

    def _forward(self, calls: list[ModelCall], gradient_checkpointing: bool) -> torch.Tensor:
        base = self.base
        latents = _cat([call.latents for call in calls])
        timesteps = _cat([call.timesteps for call in calls])
        geo = self.geometry(latents, calls[0].frame_start)
        batch, frames = timesteps.shape
        hidden = base.patch_embedding(latents.permute(0, 2, 1, 3, 4).to(self.dtype))
        hidden = hidden.flatten(2).transpose(1, 2).contiguous()
        sessions = [
            _Session(
                call.latents.shape[0],
                call.context,
                self.rotary(replace(geo, frame_start=call.frame_start), hidden.device),
            )
            for call in calls
        ]
        text_keys = [_cat([call.text.keys[layer] for call in calls]) for layer in range(self.num_layers)]
        text_values = [_cat([call.text.values[layer] for call in calls]) for layer in range(self.num_layers)]

        embedder = base.condition_embedder
        t_freq = embedder.timesteps_proj(timesteps.flatten())
        t_freq = t_freq.to(next(embedder.time_embedder.parameters()).dtype)
        temb = embedder.time_embedder(t_freq).type_as(hidden)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1)).unflatten(0, (batch, frames))
        temb = temb.unflatten(0, (batch, frames))

        checkpointed = gradient_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(base.blocks):
            args = (index, block, hidden, modulation, text_keys[index], text_values[index], sessions)
            hidden = checkpoint(self._block, *args, use_reentrant=False) if checkpointed else self._block(*args)

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
        text_keys: torch.Tensor,
        text_values: torch.Tensor,
        sessions: list[_Session],
    ) -> torch.Tensor:
        params = tuple((block.scale_shift_table.unsqueeze(0) + modulation.float()).chunk(6, dim=2))
        if self.compiled and not torch.is_grad_enabled():
            qkv, finish = self._compiled_qkv, self._compiled_finish
            attend_self = attend_cross = self._attend
        else:
            qkv, finish = block_qkv, block_finish
            attend_self, attend_cross = self._attend_self, self._attend_cross
        q, k, v = qkv(block, hidden, params, self.num_heads)
        attended = []
        rows = [session.rows for session in sessions]
        for session, own_q, own_k, own_v in zip(sessions, q.split(rows), k.split(rows), v.split(rows), strict=True):
            with _profile_range("tt::kv_cache"):
                keys, values = session.context.keys_values(index, own_k, own_v)
            attended.append(attend_self(apply_rotary(own_q, session.rope), keys, values))
        return finish(block, hidden, _cat(attended), params, text_keys, text_values, attend_cross)

    def rotary(self, geo: ChunkGeometry, device: torch.device) -> Tables:
        """Cos/sin tables of ``geo`` on ``device`` (the same read-only tensors for repeated geometries)."""
        key = (geo, torch.device(device))
        tables = self._rotary_cache.get(key)
        if tables is None:
            tables = self.rope.tables(geo.frame_start, geo.num_frames, geo.height, geo.width, device)
            self._rotary_cache[key] = tables
            if len(self._rotary_cache) > ROTARY_CACHE_SIZE:
                self._rotary_cache.popitem(last=False)
        else:
            self._rotary_cache.move_to_end(key)
        return tables

    def _unpatchify(self, hidden: torch.Tensor, geo: ChunkGeometry, batch: int) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        hidden = hidden.reshape(batch, geo.num_frames, geo.height, geo.width, pt, ph, pw, -1)
        # -> [B, F, pt, C, H, ph, W, pw]
        hidden = hidden.permute(0, 1, 4, 7, 2, 5, 3, 6)
        frames = geo.num_frames * pt
        return hidden.reshape(batch, frames, -1, geo.height * ph, geo.width * pw)


def block_qkv(
    block: nn.Module, hidden: torch.Tensor, params: Modulation, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention inputs of a block: modulated norm, then q/k/v projections and q/k norms."""
    shift_msa, scale_msa = params[0], params[1]
    frames = shift_msa.shape[1]
    attn = block.attn1
    normed = _modulate(block.norm1(hidden.float()), frames, shift_msa, scale_msa).type_as(hidden)
    q = attn.norm_q(attn.to_q(normed)).unflatten(2, (heads, -1))
    k = attn.norm_k(attn.to_k(normed)).unflatten(2, (heads, -1))
    v = attn.to_v(normed).unflatten(2, (heads, -1))
    return q, k, v


def block_finish(
    block: nn.Module,
    hidden: torch.Tensor,
    attended: torch.Tensor,
    params: Modulation,
    text_keys: torch.Tensor,
    text_values: torch.Tensor,
    attend_cross: AttentionFn,
) -> torch.Tensor:
    """The rest of a block once self-attention gave ``attended``: its output projection, cross-attention, FFN."""
    _, _, gate_msa, shift_ffn, scale_ffn, gate_ffn = params
    frames = gate_msa.shape[1]
    # 1. Self-attention's output, gated into the residual.
    out = block.attn1.to_out[0](attended.flatten(2))
    hidden = (hidden.float() + _gate(out, frames, gate_msa)).type_as(hidden)

    # 2. Cross-attention to the prompt (cached K/V).
    cross = block.attn2
    normed = block.norm2(hidden.float()).type_as(hidden)
    heads = text_keys.shape[2]
    q = cross.norm_q(cross.to_q(normed)).unflatten(2, (heads, -1))
    out = attend_cross(q, text_keys, text_values).flatten(2)
    hidden = hidden + cross.to_out[0](out)

    # 3. Feed-forward.
    normed = _modulate(block.norm3(hidden.float()), frames, shift_ffn, scale_ffn).type_as(hidden)
    out = block.ffn(normed)
    return (hidden.float() + _gate(out.float(), frames, gate_ffn)).type_as(hidden)


@dataclass(frozen=True)
class _Session:
    """One call's rows of a batched call: how many, its attention context and its rotary tables."""

    rows: int
    context: AttentionContext
    rope: Tables


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the batch; a single tensor is used as it is (no copy for a call alone)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _profile_range(name: str) -> contextlib.AbstractContextManager:
    """A profiler range named ``name`` while a profiler records, else nothing (cheap on the hot path)."""
    return record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def _ranged(name: str, attend: AttentionFn) -> AttentionFn:
    """``attend`` inside the profiler range ``name`` (eager path only: compiled graphs carry no ranges)."""

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with _profile_range(name):
            return attend(q, k, v)

    return call


def _modulate(normed: torch.Tensor, frames: int, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-frame adaptive norm: ``normed`` ``[B, F*n, D]``, shift/scale ``[B, F, 1, D]``."""
    return (normed.unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2)


def _gate(update: torch.Tensor, frames: int, gate: torch.Tensor) -> torch.Tensor:
    return (update.unflatten(1, (frames, -1)) * gate).flatten(1, 2)
