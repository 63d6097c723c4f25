"""What both training stages share: the optimiser and its schedule, mixed precision, progress lines, and the
step loop with its checkpoints.

A checkpoint holds everything the next step depends on: weights, optimiser and scheduler state, the step,
the random streams (numpy scenes, torch noise, and the global torch RNG) and the progress history, window
included. Resuming from it therefore continues the very same sequence of steps: with the same seed and
thread count the weights at the end are bit-identical to an uninterrupted run's. It is written atomically
(a temporary file, then ``os.replace``), so a run killed while writing leaves the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = 1

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """Compute dtype by name. float16 is left out: it would need loss scaling, bfloat16 does not."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for a non-float32 dtype; weights, optimiser state and losses stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor at a step: linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(
    module: nn.Module, lr: float, weight_decay: float, warmup: int, total: int, min_ratio: float
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with warmup + cosine; no weight decay on vectors (norm scales, biases, modulation tables)."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, min_ratio))


def object_loss_weights(objects: torch.Tensor | None, weight: float) -> torch.Tensor | None:
    """Loss weights: ``weight`` where ``objects`` (bool) is set, 1 elsewhere; None at weight 1, the plain mean,
    so that presets without object weighting keep their exact numbers."""
    if weight == 1.0:
        return None
    if objects is None:
        raise ValueError("an object weight needs to know where the objects are (a pool built by build_pool)")
    return 1.0 + (weight - 1.0) * objects.float()


def optimizer_step(
    loss: torch.Tensor,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> float:
    """Backward, clip the gradient norm, step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return float(norm)


class Progress:
    """Prints ``label step N/total name=value ... elapsed, eta`` every ``every`` steps; keeps the logged history.

    Elapsed time counts every run of a resumed stage; the ETA extrapolates this run's own pace.
    """

    def __init__(self, label: str, total: int, every: int) -> None:
        if every < 1:
            raise ValueError(f"log_every must be >= 1; got {every}")
        self.label = label
        self.total = total
        self.every = every
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self.done = 0
        self._window: list[dict[str, float]] = []
        self._earlier_seconds = 0.0  # spent by the runs this one resumed
        self._first_step = 0  # of this run

    @property
    def seconds(self) -> float:
        return self._earlier_seconds + time.perf_counter() - self.started

    def eta_seconds(self) -> float:
        """Seconds left at this run's pace so far (0 when done, NaN before the first step)."""
        run_steps = self.done - self._first_step
        if not run_steps:
            return math.nan
        return (time.perf_counter() - self.started) / run_steps * (self.total - self.done)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record step ``step`` (0-based); prints the window's means on every ``every``-th step and the last."""
        self._window.append(values)
        self.done = step + 1
        if (step + 1) % self.every and step + 1 != self.total:
            return
        means = {name: sum(v[name] for v in self._window) / len(self._window) for name in values}
        self._window = []
        self.history.append({"step": step + 1, **means, "seconds": round(self.seconds, 2)})
        shown = " ".join(f"{name}={value:.5f}" for name, value in means.items())
        print(
            f"[{self.label}] step {step + 1}/{self.total} {shown} "
            f"elapsed {_clock(self.seconds)} eta {_clock(self.eta_seconds())}",
            file=sys.stderr,
            flush=True,
        )

    def final(self) -> dict[str, float]:
        """The last logged window's means (what a run reports as its final losses)."""
        return {k: v for k, v in self.history[-1].items() if k not in ("step", "seconds")} if self.history else {}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the history, the unlogged window and the time spent so far."""
        return {"history": self.history, "window": self._window, "done": self.done, "seconds": self.seconds}

    def restore(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self._window = list(state["window"])
        self.done = self._first_step = int(state["done"])
        self._earlier_seconds = float(state["seconds"])
        self.started = time.perf_counter()


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@dataclass
class Streams:
    """A run's random streams: scenes and batches (numpy) and, for the transformer, noise and timesteps
    (a torch generator on the CPU, so a GPU run draws the same values). The global torch RNG is part of the
    state too, for anything drawing from it."""

    rng: np.random.Generator
    generator: torch.Generator | None = None

    @classmethod
    def seeded(cls, seed: int) -> Streams:
        """Both streams from ``seed``, and the global torch RNG seeded with it."""
        torch.manual_seed(seed)
        return cls(np.random.default_rng(seed), torch.Generator().manual_seed(seed))

    def state(self) -> dict[str, Any]:
        return {
            "numpy": self.rng.bit_generator.state,
            "torch": None if self.generator is None else self.generator.get_state(),
            "torch_global": torch.get_rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["numpy"]
        if self.generator is not None:
            self.generator.set_state(state["torch"])
        torch.set_rng_state(state["torch_global"])


@dataclass
class Checkpointing:
    """Where and how often a stage writes its checkpoint, what it resumes from, and when it stops early.

    ``identity`` (stage, seed, preset, ...) is stored in the checkpoint and must match on resume: a
    checkpoint continues only the run that wrote it. ``after_save`` runs after each checkpoint is written
    (stage 1 writes a usable snapshot of its autoencoder there).
    """

    path: Path
    every_seconds: float
    identity: dict[str, Any]
    resume: dict[str, Any] | None = None
    stop_after: int | None = None
    """Steps to run in this invocation before checkpointing and returning (None: to the end)."""
    after_save: Callable[[Progress], None] | None = None

    def __post_init__(self) -> None:
        if self.resume is not None and self.resume["identity"] != self.identity:
            theirs, ours = self.resume["identity"], self.identity
            differing = sorted(key for key in {*theirs, *ours} if theirs.get(key) != ours.get(key))
            raise ValueError(f"the checkpoint was written by another run (different {', '.join(differing)})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`run_steps` (tensors and plain values only: ``weights_only``)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a drift-lab checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def _save_atomically(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def run_steps(
    progress: Progress,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    streams: Streams,
    step: Callable[[int], dict[str, float]],
    checkpointing: Checkpointing | None = None,
) -> Progress:
    """Run ``step(index)`` (one optimiser step, returning the values to log) up to ``progress.total``.

    With ``checkpointing``: first restore its checkpoint (if resuming), then write one every
    ``every_seconds``, when ``stop_after`` steps of this invocation are done (and stop there), and at the end.
    ``progress.done`` says how far the stage got.
    """
    end = progress.total
    if checkpointing is not None:
        if checkpointing.resume is not None:
            state = checkpointing.resume
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            streams.restore(state["random"])
            progress.restore(state["progress"])
        if checkpointing.stop_after is not None:
            end = min(end, progress.done + checkpointing.stop_after)
    last_saved = time.perf_counter()
    for index in range(progress.done, end):
        progress.log(index, step(index))
        if checkpointing is not None and (
            index + 1 == end or time.perf_counter() - last_saved >= checkpointing.every_seconds
        ):
            state = {
                "format": CHECKPOINT_FORMAT,
                "identity": checkpointing.identity,
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "random": streams.state(),
                "progress": progress.state(),
            }
            _save_atomically(state, checkpointing.path)
            if checkpointing.after_save is not None:
                checkpointing.after_save(progress)
            last_saved = time.perf_counter()
    return progress


@contextlib.contextmanager
def training_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters trainable and train mode inside, frozen and eval after (the server expects frozen models)."""
    module.train().requires_grad_(True)
    try:
        yield module
    finally:
        module.eval().requires_grad_(False)
