"""One entry point that turns a model specification into everything a session needs.

``model`` is one of:

* ``tiny``: the embedded random-weight model built from code (no files at all);
* a diffusers folder shaped like ``Wan2.1-T2V-1.3B-Diffusers`` (``transformer/``, ``text_encoder/``,
  ``tokenizer/``, ``vae/``, ``scheduler/``);
* an original Wan 2.1 folder (``config.json``, ``diffusion_pytorch_model*.safetensors``,
  ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and the ``google/umt5-xxl`` tokenizer folder).

``checkpoint`` optionally replaces the transformer weights with a distilled checkpoint (Self Forcing,
Rolling Forcing, CausVid, LongLive) or a plain safetensors file. Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from tokentrim_server.loading.checkpoints import (
    CheckpointError,
    build_transformer,
    load_weights,
    normalize_keys,
    read_state_dict,
    read_transformer_config,
)
from tokentrim_server.loading.components import load_text_encoder, load_vae
from tokentrim_server.loading.folder_settings import WAN_DEFAULT_SIZE, read_settings
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.text_encoder import PromptEncoder
from tokentrim_server.models.tiny import build_tiny_components

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"
TINY_DEFAULT_SIZE = (128, 128)


@dataclass(frozen=True)
class ModelSpec:
    model: str = "tiny"
    checkpoint: str | None = None
    checkpoint_key: str = "generator_ema"
    device: str = "cpu"
    dtype: str = "float32"
    attention_backend: str = "auto"
    seed: int = 0  # weights of the tiny model
    compile: bool = False  # torch.compile the transformer blocks (docs/performance.md); False: eager reference

    def torch_dtype(self) -> torch.dtype:
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in dtypes:
            raise ValueError(f"dtype must be one of {', '.join(dtypes)}; got {self.dtype!r}")
        return dtypes[self.dtype]


@dataclass
class ModelBundle:
    """The loaded parts of one text-to-video model, on one device."""

    name: str
    transformer: CausalWanTransformer
    vae: AutoencoderKLWan
    prompt_encoder: PromptEncoder
    # Frame (height, width) when a request names none: the folder's ``default_size`` setting, 128x128 for
    # the tiny model, else Wan 2.1's 480x832.
    default_size: tuple[int, int] = WAN_DEFAULT_SIZE

    @property
    def spatial_scale(self) -> int:
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def temporal_scale(self) -> int:
        return 2 ** sum(self.vae.config.temperal_downsample)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(C, H, W)`` of a video frame size; the size must be a multiple of the model's grid."""
        grid = self.spatial_scale * self.transformer.patch_size[1]
        if height <= 0 or width <= 0 or height % grid or width % grid:
            raise ValueError(f"height and width must be positive multiples of {grid}; got {height}x{width}")
        return (self.vae.config.z_dim, height // self.spatial_scale, width // self.spatial_scale)

    def video_frames(self, latent_frames: int) -> int:
        """Video frames a causal VAE decodes from ``latent_frames`` (the first latent frame gives one)."""
        return 1 + self.temporal_scale * (latent_frames - 1)


def load_model(spec: ModelSpec) -> ModelBundle:
    dtype = spec.torch_dtype()
    device = torch.device(spec.device)
    if spec.model == "tiny":
        parts = build_tiny_components(spec.seed)
        base, vae, encoder, text_len = parts.transformer, parts.vae, parts.prompt_encoder(), parts.text_len
        default_size = TINY_DEFAULT_SIZE
    else:
        root = Path(spec.model)
        if not root.is_dir():
            raise FileNotFoundError(f"model folder not found: {root} (use 'tiny' for the embedded model)")
        settings = read_settings(root)
        text_len, default_size = settings.text_len, settings.default_size
        if (root / "transformer").is_dir():
            base = WanTransformer3DModel.from_pretrained(root / "transformer", local_files_only=True)
            vae = load_vae(root)
            encoder = load_text_encoder(root, root, text_len=text_len)
        else:
            base = _original_transformer(root, spec.checkpoint is None)
            vae = load_vae(_required(root / ORIGINAL_VAE))
            encoder = load_text_encoder(
                _required(root / ORIGINAL_T5), _required(root / ORIGINAL_TOKENIZER), text_len=text_len
            )
    if spec.checkpoint is not None:
        load_weights(base, normalize_keys(read_state_dict(spec.checkpoint, spec.checkpoint_key)))
    base = _cast(base, dtype).to(device).eval().requires_grad_(False)
    transformer = CausalWanTransformer(base, text_len, spec.attention_backend, spec.compile)
    encoder.text_encoder.to(device=device, dtype=dtype)
    if vae.dtype != dtype:  # only cast when needed: diffusers warns on every dtype cast of the VAE
        vae = vae.to(dtype)
    vae = vae.to(device).eval().requires_grad_(False)
    return ModelBundle(spec.model, transformer, vae, encoder, default_size)


def _cast(model: WanTransformer3DModel, dtype: torch.dtype) -> WanTransformer3DModel:
    """Cast to ``dtype`` but keep the modules diffusers marks float32-only (norms, time embedder, tables).

    Each tensor is cast once, straight to its final dtype: a kept module never passes through ``dtype`` on the
    way (a round trip would leave, e.g., the rotary table float32 in name but rounded to bfloat16).
    """
    if dtype == torch.float32:
        return model.float()
    kept = tuple(model._keep_in_fp32_modules)
    for module_name, module in model.named_modules():
        keep_module = any(part in module_name.split(".") for part in kept)
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(torch.float32 if keep_module or name in kept else dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(torch.float32 if keep_module or name in kept else dtype)
    return model


def _original_transformer(root: Path, needs_weights: bool) -> WanTransformer3DModel:
    config, _ = read_transformer_config(_required(root / "config.json"))
    base = build_transformer(config)
    if needs_weights:
        shards = sorted(root.glob("diffusion_pytorch_model*.safetensors"))
        if not shards:
            raise CheckpointError(f"{root} has no diffusion_pytorch_model*.safetensors and no checkpoint was given")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(shard))
        load_weights(base, normalize_keys(state))
    return base


def _required(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"expected {path.name} in the original Wan folder {path.parent}")
    return path
