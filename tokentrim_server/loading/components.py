"""The non-transformer parts (VAE, text encoder, tokenizer) from local folders or original Wan files.

Nothing is downloaded: every path must exist, and ``from_pretrained`` runs with ``local_files_only``
so a mistyped folder can never turn into a hub lookup. Original Wan files (``Wan2.1_VAE.pth``,
``models_t5_umt5-xxl-enc-bf16.pth``) are read with ``weights_only=True`` and loaded into models built
on the meta device, so the 5.7B-parameter UMT5-XXL is never allocated twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from torch import nn
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from tokentrim_server.loading.checkpoints import CheckpointError, read_state_dict
from tokentrim_server.loading.wan_t5 import convert_wan_t5_to_umt5, umt5_xxl_config
from tokentrim_server.models.text_encoder import PromptEncoder

ModelT = TypeVar("ModelT", bound=nn.Module)


def load_vae(
    path: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderKLWan:
    """Load the Wan VAE from a diffusers ``vae/`` folder (or a model folder holding one) or an original file.

    ``config`` is used only for original files, whose weights carry no configuration; it defaults to the
    Wan 2.1 VAE (``AutoencoderKLWan()``'s defaults).
    """
    path = _existing(path)
    if path.is_dir():
        folder = _component_folder(path, "vae")
        vae = AutoencoderKLWan.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    else:
        state_dict = convert_wan_vae_to_diffusers(read_state_dict(path, checkpoint_key=None))
        vae = _load_on_meta(
            lambda: AutoencoderKLWan(**dict(config or {})), state_dict, dtype, f"VAE file {path}"
        )
    # Only the device moves here: diffusers warns on every ``to(dtype)``, and the dtype is already set.
    return vae.to(device).eval().requires_grad_(False)


def load_text_encoder(
    path: str | Path,
    tokenizer_path: str | Path,
    *,
    text_len: int = 512,
    config: UMT5Config | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PromptEncoder:
    """Load the UMT5 text encoder and its tokenizer into a :class:`PromptEncoder`.

    ``path`` is a diffusers ``text_encoder/`` folder (or a model folder holding one) or the original Wan
    T5 encoder file; ``tokenizer_path`` a local tokenizer folder (diffusers ``tokenizer/`` or a copy of
    google/umt5-xxl's tokenizer files). ``config`` is used only for original files and defaults to
    umt5-xxl.
    """
    path = _existing(path)
    tokenizer = AutoTokenizer.from_pretrained(
        _component_folder(_existing(tokenizer_path), "tokenizer"), local_files_only=True
    )
    if path.is_dir():
        folder = _component_folder(path, "text_encoder")
        text_encoder = UMT5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    else:
        config = config or umt5_xxl_config()
        state_dict = convert_wan_t5_to_umt5(read_state_dict(path, checkpoint_key=None), config.num_layers)
        text_encoder = _load_on_meta(
            lambda: UMT5EncoderModel(config), state_dict, dtype, f"text encoder file {path}"
        )
        # Loading assigns ``shared`` and ``encoder.embed_tokens`` separately; tie them again so the
        # (1B-parameter) embedding is stored once.
        text_encoder.set_input_embeddings(text_encoder.get_input_embeddings())
    return PromptEncoder(tokenizer, text_encoder, text_len=text_len, device=device, dtype=dtype)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path} (weights are only read from local paths)")
    return path


def _component_folder(path: Path, component: str) -> Path:
    """Accept either the component folder itself or a diffusers model folder that contains it."""
    nested = path / component
    return nested if path.is_dir() and nested.is_dir() else path


def _load_on_meta(
    build: Callable[[], ModelT], state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, source: str
) -> ModelT:
    """Build a model without allocating weights, then adopt the checkpoint's tensors cast to ``dtype``.

    Keys must match exactly; a missing or unexpected key fails with its name.
    """
    with torch.device("meta"):
        model = build()
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing keys {_name_keys(missing)}; "
            f"unexpected keys {_name_keys(unexpected)}"
        )
    try:
        model.load_state_dict(_cast_once(state_dict, dtype), strict=True, assign=True)
    except RuntimeError as error:  # shape mismatches: a checkpoint for another configuration
        raise CheckpointError(f"{source} does not match the model: {error}") from None
    left_on_meta = [
        name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta
    ]
    if left_on_meta:
        raise CheckpointError(f"{source} leaves tensors uninitialised: {left_on_meta}")
    return model


def _cast_once(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast every tensor to ``dtype``; a tensor stored under several keys (tied weights) is cast once."""
    cast: dict[int, torch.Tensor] = {}
    for tensor in state_dict.values():
        if id(tensor) not in cast:
            cast[id(tensor)] = tensor.to(dtype)
    return {key: cast[id(tensor)] for key, tensor in state_dict.items()}


def _name_keys(keys: list[str], limit: int = 20) -> str:
    """Name the keys, cut short for a wholly wrong file so the message stays readable."""
    if not keys:
        return "none"
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"
