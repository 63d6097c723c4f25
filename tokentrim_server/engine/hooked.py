"""Session hooks inside Self Forcing's first chunk: every denoising step offered to the hooks.

A step runs as the plain pipeline runs it: one no-grad call on the step's noisy latent ``x_t`` (its K/V left
pending in the cache, as usual). Then each hook may replace the noisy latent, given a differentiable model
call at this step, and the step's update uses the replacement with the prediction already made,
``x0 = x_t' - sigma * v(x_t)``: the order of FlowMo's official code. The next step renoises that ``x0`` with the
block's keyed noise, exactly as before. A step no hook changes is bit-identical to the plain one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from tokentrim_server.cache.contexts import BlockCausalContext
from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.hooks.base import DenoisingStep, Predictor, SessionHook
from tokentrim_server.pipelines.schedule import to_x0
from tokentrim_server.pipelines.self_forcing import SelfForcingStream


class ScratchCache:
    """What a differentiable call sees of the session's cache: committed K/V read, its own kept aside.

    It offers the two methods :class:`BlockCausalContext` uses. The call's own K/V never reach the cache's
    buffers (an in-place write of a tensor with autograd history would attach the buffers to the graph), and
    each layer's are dropped once read, so gradient checkpointing does not keep them alive until backward.
    """

    def __init__(self, cache: KVCache) -> None:
        self._cache = cache
        self._own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def write_pending(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._own[layer] = (k, v)

    def keys_values(self, layer: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._own.pop(layer)
        if self._cache.length <= start:  # nothing committed to show (a new session has no buffers yet)
            return k, v
        committed_k, committed_v = self._cache.committed(layer, start)
        return torch.cat([committed_k, k], 1), torch.cat([committed_v, v], 1)


class HookedSelfForcing:
    """``first_step`` and ``finish`` of the stream's current block, with ``hooks`` adjusting every step.

    ``seconds[i]`` accumulates the wall time of ``hooks[i].adjust``.
    """

    def __init__(self, stream: SelfForcingStream, hooks: Sequence[SessionHook], seconds: list[float]) -> None:
        self.stream = stream
        self.hooks = tuple(hooks)
        self.seconds = seconds

    def first_step(self) -> torch.Tensor:
        """The block's first step from its keyed initial noise; returns its x0."""
        return self._step(0, self.stream.initial_noise(self.stream.block))

    def finish(self, x0: torch.Tensor) -> torch.Tensor:
        """The remaining steps (renoised with the block's keyed noise); returns the final x0."""
        stream = self.stream
        for step in range(1, len(stream.timesteps)):
            x0 = self._step(step, stream.renoise(stream.block, step, x0, stream.timesteps[step]))
        return x0

    def predictor(self, timestep: float) -> Predictor:
        """The differentiable model call of the current block at ``timestep``; writes nothing into the cache."""
        stream = self.stream

        def predict(latents: torch.Tensor, *, gradient_checkpointing: bool = False) -> torch.Tensor:
            # A fresh scratch view per call: predictions awaiting one backward never share K/V.
            rope = stream.rotary(stream.frame_start, latents.shape[1])
            context = BlockCausalContext(ScratchCache(stream.cache), rope)  # type: ignore[arg-type]
            timesteps = torch.full(latents.shape[:2], timestep, device=latents.device, dtype=torch.float32)
            return stream.call_differentiable(latents, timesteps, stream.frame_start, context, gradient_checkpointing)

        return predict

    def _step(self, step: int, noisy: torch.Tensor) -> torch.Tensor:
        stream = self.stream
        if torch.is_inference_mode_enabled():
            raise RuntimeError("session hooks need autograd: do not run the runner under torch.inference_mode()")
        timestep = stream.timesteps[step]
        flow = stream.block_call(noisy, timestep)  # the plain step's own call
        latent = noisy
        for index, hook in enumerate(self.hooks):
            offered = DenoisingStep(
                stream.block, step, tuple(stream.timesteps), latent, flow, self.predictor(timestep)
            )
            started = time.perf_counter()
            with torch.enable_grad():
                adjusted = hook.adjust(offered)
            self.seconds[index] += time.perf_counter() - started
            if adjusted is not None:
                latent = self._checked(hook, adjusted, noisy)
        if latent is noisy:
            return to_x0(noisy, flow, timestep)
        # Keep a hook's float32 latent exact through the update; the block stays in the model's dtype.
        return to_x0(latent, flow, timestep).to(noisy.dtype)

    @staticmethod
    def _checked(hook: SessionHook, adjusted: object, noisy: torch.Tensor) -> torch.Tensor:
        if not isinstance(adjusted, torch.Tensor) or not adjusted.is_floating_point():
            raise TypeError(f"session hook {hook.name!r} returned {type(adjusted).__name__}, not a float tensor")
        if adjusted.shape != noisy.shape:
            raise ValueError(
                f"session hook {hook.name!r} returned a latent of shape {tuple(adjusted.shape)}, "
                f"expected {tuple(noisy.shape)}"
            )
        return adjusted.detach().to(noisy.device)
