"""Tiny random-weight Wan components, built from code and seeded: the "tiny" model.

Tests and the embedded demo need every stage of the real pipeline (tokenizer, UMT5 encoder, Wan
transformer, Wan VAE) without downloading anything. These components keep the real architectures and
interfaces (16 latent channels, 8x spatial / 4x temporal VAE compression, patch (1, 2, 2)) at a size that
runs in milliseconds on a CPU. ``tokentrim_server.loading.model_folder`` writes them as a diffusers-format
folder laid out like ``Wan2.1-T2V-1.3B-Diffusers`` so folder-loading code paths are exercised too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from tokentrim_server.models.text_encoder import PromptEncoder, umt5_encoder_kwargs

TINY_TEXT_LEN = 16
TINY_TEXT_DIM = 32

# T5 conventions: <pad> is 0 (UMT5's decoder start / padding id), </s> is 1 and ends every sequence.
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Enough everyday prompt words that demo prompts map mostly to real ids instead of <unk>.
_WORD_TEXT = """
a an the of in on at with and to from by over under near into is are
cat dog bird fish horse person man woman child car boat train tree flower house city
street beach ocean sea river lake forest mountain sky sun moon cloud rain snow fire water
red orange yellow green blue purple black white golden bright dark small big slow fast
runs walks flies swims drives sits jumps dances waves shines falls moves looks plays
sunset night day morning light shadow camera view close up aerial cinematic video
"""
_WORDS = (*_WORD_TEXT.split(), ".", ",", "!", "?", "-", "'")


@dataclass
class TinyComponents:
    """The pieces of a tiny Wan T2V model; ``text_len`` is the tokeniser length its pipeline uses."""

    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerFast
    text_len: int = TINY_TEXT_LEN

    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, self.text_encoder, text_len=self.text_len)


def tiny_transformer_config() -> dict[str, Any]:
    """``WanTransformer3DModel`` kwargs: 4 heads x 32 = dim 128, 2 layers, Wan 2.1 T2V otherwise."""
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": TINY_TEXT_DIM,
        "freq_dim": 256,
        "ffn_dim": 256,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }


def tiny_vae_config() -> dict[str, Any]:
    """``AutoencoderKLWan`` kwargs: the Wan 2.1 layout with base_dim 4 instead of 96.

    ``dim_mult`` and ``num_res_blocks`` stay as in Wan 2.1 because diffusers' converter from the original
    VAE file hard-codes that block layout; base_dim 4 keeps the whole tiny folder under 5 MB.
    """
    return {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}


def tiny_text_encoder_config(vocab_size: int) -> UMT5Config:
    """A small UMT5 encoder with ``d_model`` equal to the tiny transformer's ``text_dim``."""
    return UMT5Config(vocab_size=vocab_size, **umt5_encoder_kwargs(TINY_TEXT_DIM))


def build_tiny_tokenizer(
    words: Sequence[str] = _WORDS, max_length: int = TINY_TEXT_LEN
) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` that pads with id 0 and appends ``</s>`` like T5."""
    vocab = {token: index for index, token in enumerate((*_SPECIAL_TOKENS, *dict.fromkeys(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = (EOS_TOKEN, vocab[EOS_TOKEN])
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[eos]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
    )


def build_tiny_components(seed: int = 0) -> TinyComponents:
    """Build all tiny components with weights drawn from ``seed``, leaving the global RNG untouched."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**tiny_transformer_config())
        vae = AutoencoderKLWan(**tiny_vae_config())
        text_encoder = UMT5EncoderModel(tiny_text_encoder_config(len(tokenizer)))
    return TinyComponents(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
    )


def tiny_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Flow-matching schedule with Self Forcing's timestep shift of 5."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
