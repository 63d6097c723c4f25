"""``torch.compile`` for the transformer's per-block functions, as an opt-in speed path.

The causal transformer splits each block into two pure tensor functions around the one step that has side
effects (the attention context writing the KV cache). Only those two functions are compiled: the cache
bookkeeping stays in eager Python, so compiling never changes what is cached, and one compiled graph serves
every block (the blocks share one structure; their weights are graph inputs).

The self-attention keys grow chunk by chunk until the local window is full, and a cache policy can remove
any number of tokens, so the key length is marked dynamic up front: one graph for every cache length
instead of a recompile per length.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch

C_COMPILERS = ("cc", "gcc", "g++", "clang")


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or ``None`` when it can."""
    device = torch.device(device)
    if device.type == "cpu" and not any(shutil.which(name) for name in C_COMPILERS):
        return "inductor on CPU needs a C++ compiler (none of cc, gcc, g++, clang is on PATH)"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor on CUDA needs triton (pip install triton matching the installed torch)"
    return None


class DynamicCompiled:
    """``torch.compile(fn)`` whose tensor arguments at ``dynamic_args`` have a dynamic dimension ``dim``."""

    def __init__(self, fn: Callable[..., Any], dynamic_args: Sequence[int], dim: int = 1, mode: str | None = None):
        self.fn = fn
        self.dynamic_args = tuple(dynamic_args)
        self.dim = dim
        self._compiled = torch.compile(fn, mode=mode, dynamic=None)

    def __call__(self, *args: Any) -> Any:
        for index in self.dynamic_args:
            # ``maybe``: a length that happens to equal another size in the graph may be specialised
            # without an error; the marking only spares the recompile a new length would cost.
            torch._dynamo.maybe_mark_dynamic(args[index], self.dim)
        return self._compiled(*args)

