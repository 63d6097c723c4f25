"""Prompt encoding with a UMT5 encoder, returning what the official Wan T5 wrapper returns.

Wan's ``T5EncoderModel.__call__`` tokenises to a fixed ``text_len`` with padding, runs the encoder with
the attention mask, and keeps only the embeddings of the real tokens; the transformer zero-pads the
context to ``text_len`` itself. Doing the same here keeps the conditioning identical to the reference.
"""

from __future__ import annotations

import html
import re
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

_WHITESPACE = re.compile(r"\s+")


def umt5_encoder_kwargs(
    d_model: int, *, d_kv: int | None = None, d_ff: int | None = None, num_layers: int = 2, num_heads: int = 4
) -> dict[str, Any]:
    """``UMT5Config`` kwargs, all but ``vocab_size`` (a tokenizer's), of a UMT5 encoder ``d_model`` wide.

    Every size keeps what Wan's umt5-xxl encoder is (a gated-GELU feed-forward, 32 relative-position buckets
    up to distance 128, T5's ids: pad and decoder start 0, eos 1), so one code path serves the real encoder
    and small ones. The defaults are the small encoders of the tiny and lab models: 2 layers of 4 heads,
    ``d_kv`` a quarter of ``d_model`` (at least 8) and ``d_ff`` twice ``d_model``.
    """
    return {
        "d_model": d_model,
        "d_kv": d_kv or max(8, d_model // 4),
        "d_ff": d_ff or 2 * d_model,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def clean_prompt(prompt: str) -> str:
    """Normalise a prompt as Wan's tokenizer wrapper does with ``clean='whitespace'``.

    Wan also runs ``ftfy.fix_text``; that is left out here to avoid the dependency, which only matters for
    prompts with broken unicode (mojibake).
    """
    text = html.unescape(html.unescape(prompt)).strip()
    return _WHITESPACE.sub(" ", text).strip()


class PromptEncoder:
    """Turn one prompt into its text embeddings ``[1, L, text_dim]`` (``L`` = real tokens, EOS included)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        text_len: int = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if text_len < 1:
            raise ValueError(f"text_len must be positive, got {text_len}")
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.text_encoder = text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """Embeddings of the prompt's tokens, trimmed to the attention-mask length."""
        text = clean_prompt(prompt)
        if not text:
            raise ValueError("prompt is empty; give at least one non-whitespace character")
        tokens = self.tokenizer(
            [text],
            max_length=self.text_len,
            truncation=True,
            padding="max_length",
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids = tokens.input_ids.to(self.device)
        attention_mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        length = int(attention_mask[0].gt(0).sum())
        return hidden[:, :length]
