"""FlowMo as a session hook: variance-based flow guidance on the first chunk's early denoising steps.

At every selected step (timestep at or above ``threshold``, or the first ``steps`` steps) the hook takes the
model's prediction with gradients on the step's noisy latent, computes :func:`motion_variance` on it and takes
``iterations`` Adam steps on the latent (a fresh optimiser per denoising step). Of the iterations' results it
keeps, as the official code does, the latent that followed the iteration with the lowest loss. The engine then
finishes the step with the prediction it made before the optimisation, ``x0 = x_t' - sigma * v(x_t)``, the
official order. Only the session's first chunk is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from flowmo_plugin.loss import motion_variance
from tokentrim_server.hooks import DenoisingStep, SessionHook
from tokentrim_server.policies import Parameter, SessionInfo

MIN_FRAMES = 3  # two frame distances at least, or their variance is zero


@dataclass(frozen=True)
class StepRecord:
    """One optimised denoising step: mean loss over the batch before and after, iterations without gradient."""

    before: float
    after: float | None
    skipped: int


class FlowMoHook(SessionHook):
    name = "flowmo"
    description = (
        "FlowMo: lower the variance of frame-to-frame motion in the model's prediction by gradient steps on the "
        "first chunk's noisy latent at its early denoising steps (arXiv 2506.01144). Rolling Forcing: the first "
        "block's slice of each window it is denoised in, the window's other blocks held."
    )
    parameters = (
        Parameter(
            "threshold", float, 946.0,
            "Optimise every first-chunk step whose timestep (1000 scale) is at least this; the official rule "
            "(the first 12 of 50 steps). Of Self Forcing's 4 steps only the first qualifies, of Rolling Forcing's 5 "
            "the first two; 0: every step. Ignored when steps > 0.",
            minimum=0.0, maximum=1000.0,
        ),
        Parameter("steps", int, 0, "If > 0: optimise the first `steps` denoising steps instead.", minimum=0),
        Parameter("lr", float, 1e-3, "Adam learning rate.", minimum=0.0, exclusive_minimum=True),
        Parameter("iterations", int, 1, "Adam steps per optimised denoising step.", minimum=1, maximum=100),
        Parameter(
            "prediction", str, "velocity", "The prediction the loss is taken on: the flow or x0 = x_t - sigma v.",
            choices=("velocity", "x0"),
        ),
        Parameter(
            "gradient_checkpointing", bool, False,
            "Recompute each transformer block in the backward pass (less memory, about one more forward).",
        ),
        Parameter(
            "report_loss_after", bool, True,
            "Measure the loss on the optimised latent for the report (one more no-grad forward per step).",
        ),
    )

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.records: dict[int, StepRecord] = {}  # by step: a regenerated first chunk overwrites its attempt's

    # ------------------------------------------------------------------ the hook
    @property
    def iterations(self) -> int:
        return self.params["iterations"]

    def start(self, session: SessionInfo) -> None:
        if session.frames_per_block < MIN_FRAMES:
            raise ValueError(
                f"FlowMo needs at least {MIN_FRAMES} latent frames per block (two frame-to-frame distances to "
                f"take a variance of); got frames_per_block={session.frames_per_block}"
            )

    def selects(self, step: DenoisingStep) -> bool:
        if self.params["steps"] > 0:
            return step.step < self.params["steps"]
        return step.timestep >= self.params["threshold"]

    def adjust(self, step: DenoisingStep) -> torch.Tensor | None:
        if not self.selects(step):
            return None
        latent, record = self.optimise(step)
        self.records[step.step] = record
        return latent

    def values(self) -> dict[str, float]:
        records = list(self.records.values())
        values = {"steps": float(len(records)), "skipped_iterations": float(sum(r.skipped for r in records))}
        if records:
            values["loss_before"] = sum(r.before for r in records) / len(records)
            afters = [r.after for r in records if r.after is not None]
            if afters:
                values["loss_after"] = sum(afters) / len(afters)
        return values

    # ------------------------------------------------------------------ the optimisation
    def loss(self, step: DenoisingStep, latent: torch.Tensor) -> torch.Tensor:
        """FlowMo's loss ``[B]`` of the prediction at ``latent`` (differentiable under grad mode)."""
        flow = step.predict(latent, gradient_checkpointing=self.params["gradient_checkpointing"])
        prediction = flow if self.params["prediction"] == "velocity" else _precise(latent) - step.sigma * flow
        return motion_variance(prediction)

    def loss_and_gradient(self, step: DenoisingStep, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss ``[B]`` at ``latent`` and the gradient of its sum w.r.t. ``latent``: what Adam is given."""
        leaf = _precise(latent.detach()).requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss(step, leaf)
            (gradient,) = torch.autograd.grad(loss.sum(), leaf)
        return loss.detach(), gradient

    def optimise(self, step: DenoisingStep) -> tuple[torch.Tensor, StepRecord]:
        """``iterations`` Adam steps on the step's noisy latent; returns the kept latent and a record."""
        sample = _precise(step.noisy.detach()).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([sample], lr=self.params["lr"])
        best = sample.detach().clone()
        lowest = torch.full((sample.shape[0],), math.inf, device=sample.device)
        before: torch.Tensor | None = None
        skipped = 0
        for _ in range(self.params["iterations"]):
            loss, gradient = self.loss_and_gradient(step, sample)
            before = loss if before is None else before
            if not bool(gradient.any()):  # as the official code: no gradient, no step
                skipped += 1
                continue
            sample.grad = gradient
            optimiser.step()
            # Each row keeps the latent that followed its lowest-loss iteration (the official selection).
            improved = loss < lowest
            lowest = torch.where(improved, loss, lowest)
            best[improved] = sample.detach()[improved]
        assert before is not None  # iterations >= 1
        after = None
        if self.params["report_loss_after"]:
            with torch.no_grad():
                after = float(self.loss(step, best).mean())
        return best, StepRecord(float(before.mean()), after, skipped)


def _precise(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 at least: an Adam step of lr ~1e-3 would mostly round away in a bfloat16 latent."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
