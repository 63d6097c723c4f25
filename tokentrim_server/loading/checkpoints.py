"""Transformer weights from local files: diffusers folders, original Wan files, distilled checkpoints.

Everything is read from disk; nothing is ever fetched. Pickled checkpoints are opened with
``torch.load(..., weights_only=True)`` so a checkpoint can never run code.

Accepted transformer weight files:

* diffusers ``transformer/`` folders (``config.json`` + safetensors shards);
* original Wan 2.1 ``diffusion_pytorch_model.safetensors`` with original key names;
* distilled checkpoints (Self Forcing ``self_forcing_dmd.pt``, Rolling Forcing ``rolling_forcing_dmd.pt``,
  CausVid, LongLive): ``torch.save`` dicts holding ``generator_ema`` / ``generator``, keys prefixed
  ``model.``, possibly with ``_fsdp_wrapped_module.`` segments;
* plain safetensors or ``.pt`` state dicts in either key naming.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file

CHECKPOINT_KEYS = ("generator_ema", "generator")
_FSDP_SEGMENT = "_fsdp_wrapped_module."
# Keys that only the original Wan naming has; diffusers names these differently.
_ORIGINAL_MARKERS = ("head.modulation", "self_attn.q.weight", "time_projection.1.weight")


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message says why."""


def read_state_dict(path: str | Path, checkpoint_key: str | None = "generator_ema") -> dict[str, torch.Tensor]:
    """Read a weight file into a flat state dict, choosing ``checkpoint_key`` in distilled checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(loaded).__name__})")
    nested = [key for key in loaded if isinstance(loaded[key], Mapping)]
    if not nested:
        return dict(loaded)
    if checkpoint_key is None or checkpoint_key not in loaded:
        raise CheckpointError(
            f"{path} holds the weight sets {sorted(nested)}; choose one with checkpoint_key "
            f"(got {checkpoint_key!r})"
        )
    return dict(loaded[checkpoint_key])


def normalize_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop training wrappers (``_fsdp_wrapped_module.`` anywhere, a leading ``model.``) and convert original
    Wan names to diffusers names with diffusers' own converter."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.replace(_FSDP_SEGMENT, "")
        if key.startswith("model.") and not key.startswith("model.diffusion_model."):
            key = key[len("model.") :]
        cleaned[key] = value
    if any(key.endswith(marker) or marker in key for key in cleaned for marker in _ORIGINAL_MARKERS):
        cleaned = convert_wan_transformer_to_diffusers(cleaned)
    return cleaned


def load_weights(model: WanTransformer3DModel, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a (normalised) state dict strictly; missing or unexpected keys fail with their names."""
    expected = set(model.state_dict())
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint does not match the transformer: "
            f"missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}"
        )
    for key, tensor in model.state_dict().items():
        if tuple(tensor.shape) != tuple(state_dict[key].shape):
            raise CheckpointError(
                f"checkpoint key {key} has shape {tuple(state_dict[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}"
            )
    model.load_state_dict(dict(state_dict), strict=True)


def _preview(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


def diffusers_config_from_original(config: Mapping) -> dict:
    """Map an original Wan 2.1 ``config.json`` (``dim``, ``num_heads``, ...) to ``WanTransformer3DModel`` args."""
    try:
        dim, heads = int(config["dim"]), int(config["num_heads"])
        return {
            "patch_size": tuple(config.get("patch_size", (1, 2, 2))),
            "num_attention_heads": heads,
            "attention_head_dim": dim // heads,
            "in_channels": int(config.get("in_dim", 16)),
            "out_channels": int(config.get("out_dim", 16)),
            "text_dim": int(config.get("text_dim", 4096)),
            "freq_dim": int(config.get("freq_dim", 256)),
            "ffn_dim": int(config["ffn_dim"]),
            "num_layers": int(config["num_layers"]),
            "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
            "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
            "eps": float(config.get("eps", 1e-6)),
        }
    except KeyError as missing:
        raise CheckpointError(f"original Wan config lacks the field {missing}") from None


def read_transformer_config(path: str | Path) -> tuple[dict, int]:
    """Read a transformer ``config.json`` in either format; returns (diffusers kwargs, text_len)."""
    config = json.loads(Path(path).read_text())
    if "dim" in config:
        return diffusers_config_from_original(config), int(config.get("text_len", 512))
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    return kwargs, int(config.get("text_len", 512))


def build_transformer(config: Mapping, dtype: torch.dtype = torch.float32) -> WanTransformer3DModel:
    return WanTransformer3DModel.from_config(dict(config)).to(dtype)
