"""Attention backends for the causal transformer, chosen once at start-up.

Every backend takes ``q, k, v`` laid out ``[batch, tokens, heads, head_dim]`` (the layout the KV cache
stores) and returns the same layout. ``sdpa`` runs everywhere and is the reference path; ``xformers`` and
``flash`` are CUDA-only speed paths used when their packages are installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKENDS = ("auto", "sdpa", "xformers", "flash")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops as xops

    return xops.memory_efficient_attention(q, k, v)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)


def _available(name: str, device: torch.device) -> bool:
    if name == "sdpa":
        return True
    if device.type != "cuda":
        return False
    module = {"xformers": "xformers", "flash": "flash_attn"}[name]
    return importlib.util.find_spec(module) is not None


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Return the concrete backend for ``name`` on ``device``; ``auto`` prefers the fused CUDA kernels."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "auto":
        return next(b for b in ("flash", "xformers", "sdpa") if _available(b, device))
    if not _available(name, device):
        raise ValueError(
            f"attention_backend {name!r} is not available on {device.type}: it needs CUDA and its package "
            "installed (pip install 'tokentrim-server[cuda]')"
        )
    return name


def attention_function(backend: str) -> AttentionFn:
    """The attention callable for a resolved backend name."""
    return {"sdpa": _sdpa, "xformers": _xformers, "flash": _flash}[backend]
