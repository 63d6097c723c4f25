"""The session-hook interface: plugins that run at session start and take part in the first chunk's denoising.

"The first chunk" is the session's first generated chunk (after any prefilled ones); its denoising steps are
its own block's steps. In Self Forcing the block is denoised alone; in Rolling Forcing it is denoised jointly
with the blocks after it, one step per window, and a hook sees and changes only its block's slice of each
window (the other blocks held as they are: docs/plugins.md).

Lifecycle, one hook instance per session (:func:`tokentrim_server.hooks.create_hook` builds a fresh one, and an
instance keeps per-session state, so never share one between sessions):

1. ``start(session)`` once, when the runner opens; raise ``ValueError`` to refuse the session (say why).
2. ``adjust(step)`` at every denoising step of the session's first chunk's block (again for every attempt, if a cache
   policy regenerates that chunk): return the noisy latent the step continues from, or ``None`` to leave it.
3. ``values()`` once, after the first chunk: the figures of the hook's :class:`HookReport`.
4. ``end()`` once, when the session closes.

Later chunks never reach a hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from tokentrim_server.plugin_api import Configurable, SessionInfo


class Predictor(Protocol):
    """The model's flow prediction at one denoising step, differentiable with respect to ``latents``."""

    def __call__(self, latents: torch.Tensor, *, gradient_checkpointing: bool = False) -> torch.Tensor:
        """``latents`` ``[B, F, C, H, W]`` (any float dtype; cast to the model's) -> flow ``[B, F, C, H, W]``.

        Follows the grad mode: the engine calls :meth:`SessionHook.adjust` with gradients enabled, so the result
        is differentiable; wrap a call in ``torch.no_grad()`` for a plain evaluation. Model parameters are
        frozen, so ``latents`` is the only leaf. The call reads the session's KV cache and writes nothing into
        it. ``gradient_checkpointing`` recomputes each transformer block in the backward pass instead of keeping
        its activations (same values, less memory, about one more forward of compute).
        """
        ...


@dataclass(frozen=True)
class DenoisingStep:
    """One denoising step of the first chunk's block, as a hook sees it.

    The engine has already made this step's own prediction ``flow`` (no gradients) on ``noisy``. In Rolling
    Forcing both are the block's slice of its window's joint call, and ``predict`` varies that slice only, the
    window's other blocks held at their noisy latents (their updates are the plain ones). Whatever
    latent :meth:`SessionHook.adjust` returns replaces ``noisy`` in the step's update ``x0 = x_t - sigma * v``
    with that same prediction (it is not recomputed: the order of FlowMo's official code), and so shapes every
    later step. With several hooks, each sees the latent the previous one returned, and the original ``flow``.
    Tensors are the engine's own: read them, never write into them.
    """

    chunk: int
    step: int  # index into ``timesteps``
    timesteps: tuple[float, ...]  # the pipeline's (warped) schedule, 1000 scale
    noisy: torch.Tensor  # [B, F, C, H, W] the latent the step starts from
    flow: torch.Tensor  # the step's prediction on ``noisy``
    predict: Predictor

    @property
    def timestep(self) -> float:
        return self.timesteps[self.step]

    @property
    def sigma(self) -> float:
        """Noise level of the step: ``x_t = (1 - sigma) x0 + sigma * noise``."""
        return self.timestep / 1000.0


@dataclass(frozen=True)
class HookReport:
    """What one hook did in a session: its wall time (``start`` plus every ``adjust``) and its figures."""

    name: str
    seconds: float
    values: dict[str, float] = field(default_factory=dict)


class SessionHook(Configurable):
    """Base class of session hooks; the defaults take part in nothing.

    Subclasses set ``name``, ``description`` and ``parameters`` and override the methods they need. Validated
    parameters are in ``self.params`` (defaults filled in); a bad value raises
    :class:`~tokentrim_server.hooks.ParameterError` naming the parameter.
    """

    kind: ClassVar[str] = "session hook"

    @property
    def iterations(self) -> int:
        """Optimisation iterations (model forward and backward passes) per denoising step the hook adjusts.

        0 for a hook that optimises nothing. Every session shares the device, so the server refuses a session
        whose hook asks for more than its ``max_hook_iterations`` limit; a hook with such a knob reports it.
        """
        return 0

    def start(self, session: SessionInfo) -> None:
        """Called once when the session opens; raise ``ValueError`` to refuse it."""

    def adjust(self, step: DenoisingStep) -> torch.Tensor | None:
        """The noisy latent ``step`` should continue from (same shape as ``step.noisy``), or ``None``."""
        return None

    def values(self) -> dict[str, float]:
        """Figures for the report, read once after the first chunk (e.g. ``{"loss_before": ..., ...}``)."""
        return {}

    def end(self) -> None:
        """Called once when the session closes."""
