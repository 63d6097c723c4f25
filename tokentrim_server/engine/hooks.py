"""Session hooks inside the first generated chunk: every denoising step of its block offered to the hooks.

The stream runs each step as the plain pipeline does: one no-grad call on the step's noisy latent ``x_t``
(Self Forcing: the block alone; Rolling Forcing: the window the block is the oldest of). Then
:class:`HookSteps` offers the block's step to each hook, with the differentiable model call the stream hands
over for it (``predict``), and the step's update uses the latent the hooks return with the prediction
already made, ``x0 = x_t' - sigma * v(x_t)``: the order of FlowMo's official code. A step no hook changes
is bit-identical to the plain one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from tokentrim_server.hooks.base import DenoisingStep, SessionHook
from tokentrim_server.pipelines.base import Predict, StreamBase


class HookSteps:
    """The stream's step adjuster while hooks take part; ``seconds[i]`` accumulates ``hooks[i].adjust`` time."""

    def __init__(self, stream: StreamBase, hooks: Sequence[SessionHook], seconds: list[float]) -> None:
        self.stream = stream
        self.hooks = tuple(hooks)
        self.seconds = seconds

    def __call__(self, step: int, noisy: torch.Tensor, flow: torch.Tensor, predict: Predict) -> torch.Tensor:
        """The latent the step's update starts from: ``noisy`` itself when no hook changes it."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("session hooks need autograd: do not run the runner under torch.inference_mode()")
        stream = self.stream
        latent = noisy
        for index, hook in enumerate(self.hooks):
            offered = DenoisingStep(stream.emitted, step, tuple(stream.timesteps), latent, flow, predict)
            started = time.perf_counter()
            with torch.enable_grad():
                adjusted = hook.adjust(offered)
            self.seconds[index] += time.perf_counter() - started
            if adjusted is not None:
                latent = self._checked(hook, adjusted, noisy)
        return latent

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
