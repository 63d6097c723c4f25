"""Writing components as a diffusers model folder laid out like ``Wan2.1-T2V-1.3B-Diffusers``.

It lives with the loaders, not with the models, because the folder is defined by what ``load_model`` reads
(``model_index.json``, ``tokentrim.json``): tests write the tiny model and the drift lab its trained models
this way, so that folder-loading code paths run on them unmodified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers

from tokentrim_server.loading.folder_settings import write_settings
from tokentrim_server.models.tiny import TinyComponents, build_tiny_components, tiny_scheduler


def save_tiny_model_folder(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny model as a diffusers folder shaped like ``Wan2.1-T2V-1.3B-Diffusers``; returns it."""
    return save_components_folder(build_tiny_components(seed), path)


def save_components_folder(
    components: TinyComponents, path: str | Path, default_size: tuple[int, int] | None = None
) -> Path:
    """Write ``components`` as a diffusers folder that ``load_model`` reads unmodified; returns it.

    ``default_size`` (frame height, width) is recorded in ``tokentrim.json`` for models trained at one size.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    # name -> (library, class name written to model_index.json, object to save). The tokenizer is named by
    # its public alias, which every transformers version can import, not by its v5 backend class.
    parts: dict[str, tuple[str, str, Any]] = {
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", tiny_scheduler()),
        "text_encoder": ("transformers", "UMT5EncoderModel", components.text_encoder),
        "tokenizer": ("transformers", "PreTrainedTokenizerFast", components.tokenizer),
        "transformer": ("diffusers", "WanTransformer3DModel", components.transformer),
        "vae": ("diffusers", "AutoencoderKLWan", components.vae),
    }
    model_index: dict[str, Any] = {"_class_name": "WanPipeline", "_diffusers_version": diffusers.__version__}
    for name, (library, class_name, part) in parts.items():
        part.save_pretrained(root / name)
        model_index[name] = [library, class_name]
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    write_settings(root, components.text_len, default_size)
    return root
