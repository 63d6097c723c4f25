"""Key mapping from the original Wan T5 encoder checkpoint to transformers' ``UMT5EncoderModel``.

Wan ships its text encoder as ``models_t5_umt5-xxl-enc-bf16.pth``, a state dict of its own ``T5Encoder``
(``wan/modules/t5.py``). It is umt5-xxl's encoder: per-block relative position embeddings
(``shared_pos=False``), a gated-GELU (tanh) feed-forward computing ``fc2(fc1(x) * gelu(gate.0(x)))``, RMS
layer norms and unscaled attention, all of which match transformers' UMT5 one for one, so converting is
only renaming.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import UMT5Config

from tokentrim_server.models.text_encoder import umt5_encoder_kwargs

# Per-block original suffix -> UMT5 suffix, relative to ``blocks.N.`` and ``encoder.block.N.``.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
# UMT5EncoderModel ties ``encoder.embed_tokens`` to ``shared``; both names are filled from one tensor.
_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def umt5_xxl_config() -> UMT5Config:
    """The configuration of google/umt5-xxl's encoder, as Wan 2.1 uses it."""
    return UMT5Config(
        vocab_size=256384,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        **umt5_encoder_kwargs(4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
    )


def wan_t5_key_map(num_layers: int) -> dict[str, str]:
    """Original Wan T5 key -> UMT5 key, for every weight except the token embedding."""
    key_map = {"norm.weight": "encoder.final_layer_norm.weight"}
    for layer in range(num_layers):
        for original, converted in _BLOCK_KEYS.items():
            key_map[f"blocks.{layer}.{original}"] = f"encoder.block.{layer}.{converted}"
    return key_map


def convert_wan_t5_to_umt5(
    state_dict: Mapping[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename an original Wan T5 encoder state dict to ``UMT5EncoderModel`` keys.

    Keys the mapping does not know are kept under their own names, so a strict load reports them as
    unexpected instead of dropping them silently.
    """
    key_map = wan_t5_key_map(num_layers)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == "token_embedding.weight":
            converted.update(dict.fromkeys(_EMBEDDING_KEYS, tensor))
        else:
            converted[key_map.get(key, key)] = tensor
    return converted
