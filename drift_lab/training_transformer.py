"""Stage 2: train the causal transformer chunk by chunk, through the very forward the server runs.

Self Forcing generates a chunk by denoising it against the cache of the chunks before it, then writes the
finished chunk into the cache with one more call at ``t = context_noise``. Teacher forcing trains exactly
those two calls on true latents: for each chunk ``i`` of a clip,

1. predict chunk ``i`` from its noisy version (timestep drawn from the pipeline's warped denoising steps),
   attending to the clean context of chunks ``< i`` plus its own keys, as ``BlockCausalContext`` does;
2. run the clean chunk ``i`` at the context timestep, which appends its roped K/V to the context, the keys
   the cache-writing call would leave in the cache.

A clip whose caption changes at a chunk boundary (a switch clip, ``drift_lab.training_data``) is trained as the
server applies a prompt switch in its ``block_causal`` recache mode: before the first chunk under the new
caption, every clean chunk before it is written again under the new caption, oldest first, each attending to
those rewritten before it (``docs/engine.md``, "Prompt switches").

The calls go through :meth:`CausalWanTransformer.forward` with :class:`TrainingAttention` in place of the
inference cache: the same keys, but kept in per-layer Python lists joined out of place, because the
inference ``KVCache`` writes into preallocated buffers in place, which autograd cannot differentiate.

The network stays a plain flow predictor (the unmodified pipelines compute ``x0 = x_t - sigma v`` from it),
but the loss is taken in x0 space, ``MSE(x_t - sigma v, x0)``: at this width the velocity loss did not train
in the lab's feasibility run (issue #9), while the x0 loss weights each timestep by ``sigma^2`` and so puts the
effort where the few-step sampler needs it: the clean estimate after the very first, noisiest steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from drift_lab.model import FRAMES_PER_BLOCK, TrainingConfig
from drift_lab.training_data import ClipPool, noised
from drift_lab.training_loop import (
    Checkpointing,
    Progress,
    Streams,
    autocast,
    make_optimizer,
    object_loss_weights,
    optimizer_step,
    run_steps,
    training_mode,
)
from tokentrim_server.models.causal_wan import CausalWanTransformer, TextContext
from tokentrim_server.models.rope import apply_rotary
from tokentrim_server.pipelines.schedule import denoising_timesteps, to_x0

Tables = tuple[torch.Tensor, torch.Tensor]


class TrainingKV:
    """Roped K and V of the clean chunks written so far, per layer, as lists of tensors (autograd-safe)."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]


class TrainingAttention:
    """One call's :class:`AttentionContext`: the stored context followed by the chunk's own roped K/V.

    With ``write`` the chunk's K/V are appended for later calls (the cache-writing call); without, nothing is
    stored (a denoising call). Both see ``[context; own]``, exactly what ``BlockCausalContext`` returns.
    """

    def __init__(self, kv: TrainingKV, rope: Tables, write: bool) -> None:
        self.kv = kv
        self.rope = rope
        self.write = write

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        roped = apply_rotary(k, self.rope)
        keys = torch.cat([*self.kv.keys[layer], roped], dim=1)
        values = torch.cat([*self.kv.values[layer], v], dim=1)
        if self.write:
            self.kv.keys[layer].append(roped)
            self.kv.values[layer].append(v)
        return keys, values


def denoising_grid(config: TrainingConfig | None = None) -> torch.Tensor:
    """The timesteps a model of ``config`` is sampled at (``None``: Self Forcing's defaults, warped
    1000/750/500/250), each read off the shifted grid as the pipelines' ``warp_denoising_step`` does."""
    config = config or TrainingConfig()
    return torch.tensor(denoising_timesteps(config.denoising_steps, config.timestep_shift), dtype=torch.float32)


def chunk_texts(model: CausalWanTransformer, prompts: torch.Tensor) -> list[TextContext]:
    """The text context of each chunk of a batch, from prompt embeddings ``[B, chunks, L, D]`` (under the
    caller's grad mode); a chunk whose prompts are those of the chunk before shares its context object, which
    is how :func:`teacher_forced_flows` tells a switch."""
    texts: list[TextContext] = []
    for chunk in range(prompts.shape[1]):
        if chunk and torch.equal(prompts[:, chunk], prompts[:, chunk - 1]):
            texts.append(texts[-1])
        else:
            texts.append(model.text_context(prompts[:, chunk]))
    return texts


def teacher_forced_flows(
    model: CausalWanTransformer,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    context_timesteps: torch.Tensor,
    texts: Sequence[TextContext],
) -> torch.Tensor:
    """Flow predictions ``[B, F, C, h, w]`` for every chunk of ``noisy``, each against the chunks before it.

    ``noisy`` holds each chunk at its denoising timestep (``timesteps`` ``[B, chunks]``); ``context`` the
    clean latents (or their context-noised version, at ``context_timesteps`` ``[B]``) that are written to
    the attention context after their chunk has been predicted, as the pipeline commits a finished chunk.
    ``texts`` holds each chunk's text context; where it is another object than the previous chunk's (a prompt
    switch in some clip of the batch), the context is rewritten under it first, as the ``block_causal`` recache
    does (for the clips whose prompt did not change, that rewrite reproduces the context they had).
    """
    batch, frames = noisy.shape[:2]
    if frames % FRAMES_PER_BLOCK:
        raise ValueError(f"latents must hold whole chunks of {FRAMES_PER_BLOCK} frames; got {frames}")
    chunks = frames // FRAMES_PER_BLOCK
    if len(texts) != chunks:
        raise ValueError(f"texts must hold one text context per chunk ({chunks}); got {len(texts)}")
    kv = TrainingKV(model.num_layers)
    context_t = context_timesteps.to(noisy.device)[:, None].expand(batch, FRAMES_PER_BLOCK)
    ropes = [
        model.rotary(model.geometry(noisy[:, start : start + FRAMES_PER_BLOCK], start), noisy.device)
        for start in range(0, frames, FRAMES_PER_BLOCK)
    ]

    def write(chunk: int, text: TextContext) -> None:
        start = chunk * FRAMES_PER_BLOCK
        writer = TrainingAttention(kv, ropes[chunk], write=True)
        model(context[:, start : start + FRAMES_PER_BLOCK], context_t, text, writer, start)

    flows = []
    for chunk in range(chunks):
        if chunk and texts[chunk] is not texts[chunk - 1]:
            kv = TrainingKV(model.num_layers)
            for earlier in range(chunk):
                write(earlier, texts[chunk])
        start = chunk * FRAMES_PER_BLOCK
        t = timesteps[:, chunk].to(noisy.device)[:, None].expand(batch, FRAMES_PER_BLOCK)
        reader = TrainingAttention(kv, ropes[chunk], write=False)
        flows.append(model(noisy[:, start : start + FRAMES_PER_BLOCK], t, texts[chunk], reader, start))
        # The last chunk's keys would serve no later chunk; a chunk before a switch is written by its recache.
        if chunk + 1 < chunks and texts[chunk + 1] is texts[chunk]:
            write(chunk, texts[chunk])
    return torch.cat(flows, dim=1)


def clip_loss(
    model: CausalWanTransformer,
    latents: torch.Tensor,
    texts: Sequence[TextContext],
    timesteps: torch.Tensor,
    context_timesteps: torch.Tensor,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """x0-space MSE of clips ``latents`` ``[B, F, C, h, w]`` (F a multiple of 3) under teacher forcing, each
    chunk conditioned on its text context in ``texts`` (:func:`chunk_texts`).

    ``timesteps`` ``[B, chunks]`` are the denoising timesteps of each chunk, ``context_timesteps`` ``[B]``
    those of the clean context (its latents are noised to them: the context-noise augmentation). ``weights``
    (broadcastable to ``latents``, e.g. :func:`~drift_lab.training_loop.object_loss_weights`) make it a weighted mean.
    """
    per_frame = timesteps.to(latents.device).repeat_interleave(FRAMES_PER_BLOCK, dim=1)
    noisy = noised(latents, per_frame, generator)
    context = noised(latents, context_timesteps, generator)
    flows = teacher_forced_flows(model, noisy, timesteps, context, context_timesteps, texts)
    x0 = to_x0(noisy, flows, per_frame[..., None, None, None])
    squared = (x0.float() - latents.float()).square()
    if weights is None:
        return squared.mean()
    weights = weights.to(squared).expand_as(squared)
    return (squared * weights).sum() / weights.sum()


def draw_timesteps(
    config: TrainingConfig, chunks: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (clip, chunk) denoising timesteps from the model's schedule (:func:`denoising_grid`); per clip
    context timesteps in ``[0, config.context_noise_aug]``."""
    batch, context_noise_aug = config.batch, config.context_noise_aug
    grid = denoising_grid(config)
    timesteps = grid[torch.randint(len(grid), (batch, chunks), generator=generator)]
    context = torch.rand(batch, generator=generator) * context_noise_aug
    return timesteps, context


def train_transformer(
    model: CausalWanTransformer,
    pool: ClipPool,
    config: TrainingConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    dtype: torch.dtype,
    log_every: int,
    checkpointing: Checkpointing | None = None,
) -> Progress:
    """Train ``model.base`` in place for ``config.steps`` steps on batches from ``pool``; returns the progress
    (``done`` < ``total`` when ``checkpointing`` stopped it early)."""
    device = model.device
    chunks = pool.latents.shape[1] // FRAMES_PER_BLOCK

    def step(index: int) -> dict[str, float]:
        latents, prompts, objects = pool.batch(rng, config.batch)
        timesteps, context = draw_timesteps(config, chunks, generator)
        weights = object_loss_weights(objects, config.object_weight)
        with autocast(device, dtype):
            loss = clip_loss(model, latents, chunk_texts(model, prompts), timesteps, context, generator, weights)
        optimizer_step(loss, model.base, optimizer, scheduler, config.grad_clip)
        return {"x0_mse": loss.item()}

    with training_mode(model.base):
        # After training_mode: the optimiser takes the parameters it made trainable.
        optimizer, scheduler = make_optimizer(
            model.base, config.lr, config.weight_decay, config.warmup_steps, config.steps, config.min_lr_ratio
        )
        progress = Progress("transformer", config.steps, log_every)
        return run_steps(progress, model.base, optimizer, scheduler, Streams(rng, generator), step, checkpointing)
