"""What both training stages share: the optimiser and its schedule, mixed precision, progress lines."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

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
    """Prints ``label step N/total name=value ... seconds`` every ``every`` steps and keeps the logged history."""

    def __init__(self, label: str, total: int, every: int) -> None:
        if every < 1:
            raise ValueError(f"log_every must be >= 1; got {every}")
        self.label = label
        self.total = total
        self.every = every
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self._window: list[dict[str, float]] = []

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record step ``step`` (0-based); prints the window's means on every ``every``-th step and the last."""
        self._window.append(values)
        if (step + 1) % self.every and step + 1 != self.total:
            return
        means = {name: sum(v[name] for v in self._window) / len(self._window) for name in values}
        self._window = []
        self.history.append({"step": step + 1, **means, "seconds": round(self.seconds, 2)})
        shown = " ".join(f"{name}={value:.5f}" for name, value in means.items())
        print(f"[{self.label}] step {step + 1}/{self.total} {shown} {self.seconds:.1f}s", file=sys.stderr, flush=True)

    def final(self) -> dict[str, float]:
        """The last logged window's means (what a run reports as its final losses)."""
        return {k: v for k, v in self.history[-1].items() if k not in ("step", "seconds")} if self.history else {}


@contextlib.contextmanager
def training_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters trainable and train mode inside, frozen and eval after (the server expects frozen models)."""
    module.train().requires_grad_(True)
    try:
        yield module
    finally:
        module.eval().requires_grad_(False)
