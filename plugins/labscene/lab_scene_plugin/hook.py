"""``lab_scene``: start a drift-lab model's first chunk from a render of the scene its prompt names.

A lab model (``drift_lab/``) draws only some of its prompt's objects from noise alone: sampled in a few steps,
a regression model's first chunk is near the mean of every scene its caption allows, where the objects'
positions average out (``cpu-wide-lanes-seed0`` shows both objects of the demo's prompt throughout in 8 of 24
seeds; with this hook, 24 of 24: ``benchmarks/lab_prompts.py``). This hook gives it what the
lab's own runs give it with a true first chunk: at session start it renders the scene the prompt names
(``drift_lab.world.scene_from_caption``; positions and speeds drawn from the session seed) and encodes it with
the model's autoencoder; during the first chunk it skips the denoising steps above ``noise_level`` by making
their clean estimate that render, so the model denoises the render noised to the first level of its schedule
at or below ``noise_level`` (SDEdit, image-to-video style). Later chunks are the model's own.

Only for lab model folders (a ``training.json`` recording the world) at their training frame size, with the
drift lab importable (the server started from the repository root).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tokentrim_server.hooks import DenoisingStep, SessionHook
from tokentrim_server.policies import Parameter, SessionInfo


class LabSceneHook(SessionHook):
    name = "lab_scene"
    description = (
        "Drift-lab models only: start the first chunk from a render of the scene the prompt names (in the lab "
        "world's grammar), encoded with the model's autoencoder and noised to noise_level; the model denoises "
        "from there. From noise alone a lab model draws only some of the named objects."
    )
    parameters = (
        Parameter(
            "noise_level", float, 0.5,
            "The model takes over at the first level of its schedule at or below this (sigma, 0..1); the steps "
            "above it take the render as their clean estimate. 1: the hook changes nothing; below the last "
            "level: the first chunk is the render itself.",
            minimum=0.0, maximum=1.0, exclusive_minimum=True,
        ),
    )

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self._render: torch.Tensor | None = None
        self._skipped: set[int] = set()  # indices of the steps whose clean estimate was the render
        self._takeover: float | None = None  # sigma of the first step the model denoised on its own

    def start(self, session: SessionInfo) -> None:
        if not session.model or not (Path(session.model) / "training.json").is_file():
            raise ValueError(
                f"session hook 'lab_scene' needs a drift-lab model folder (with training.json); this server "
                f"runs {session.model or 'an unnamed model'!r}"
            )
        try:
            from drift_lab.prompt_scene import caption_latents
        except ImportError as error:
            raise ValueError(
                "session hook 'lab_scene' needs the drift lab (drift_lab/) importable: start the server from the "
                f"repository root with python -m tokentrim_server.server ({error})"
            ) from None
        render = caption_latents(session.model, session.prompt, session.seed or 0, session.frames_per_block)
        expected = (session.frames_per_block, *session.latent_shape)
        if tuple(render.shape[1:]) != expected:
            raise ValueError(
                f"session hook 'lab_scene': the model's world renders latents {tuple(render.shape[1:])} per chunk, "
                f"the session asks {expected}; request the model's training frame size (height and width)"
            )
        self._render = render

    def adjust(self, step: DenoisingStep) -> torch.Tensor | None:
        if self._render is None:
            raise RuntimeError("lab_scene: adjust before start")
        if step.sigma <= self.params["noise_level"]:
            if self._takeover is None:
                self._takeover = step.sigma
            return None
        # The engine's update is x0 = latent - sigma * flow with this step's prediction: returning
        # render + sigma * flow makes the clean estimate exactly the render, which the next step noises.
        self._skipped.add(step.step)
        return self._render.to(step.flow) + step.sigma * step.flow

    def values(self) -> dict[str, float]:
        # takeover_sigma 0: every step was skipped, the first chunk is the render itself.
        return {"steps_skipped": float(len(self._skipped)), "takeover_sigma": self._takeover or 0.0}
