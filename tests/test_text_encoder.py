"""PromptEncoder returns the real tokens' embeddings, as the official Wan T5 wrapper does."""

from __future__ import annotations

import pytest
import torch

from tokentrim_server.models.text_encoder import PromptEncoder, clean_prompt
from tokentrim_server.models.tiny import TinyComponents, build_tiny_components


@pytest.fixture(scope="module")
def tiny() -> TinyComponents:
    return build_tiny_components(seed=0)


def test_returns_only_real_tokens(tiny: TinyComponents) -> None:
    encoder = tiny.prompt_encoder()
    embeddings = encoder.encode("A cat runs on the beach")
    assert embeddings.shape == (1, 7, 32)  # six words and </s>
    assert embeddings.dtype == torch.float32


def test_padding_is_masked_out(tiny: TinyComponents) -> None:
    """Padded and masked encoding equals encoding the bare tokens, so the mask reaches the encoder."""
    embeddings = tiny.prompt_encoder().encode("a dog swims in the lake")
    ids = tiny.tokenizer("a dog swims in the lake", return_tensors="pt").input_ids
    with torch.no_grad():
        bare = tiny.text_encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(embeddings, bare, atol=1e-6, rtol=1e-5)


def test_long_prompts_are_truncated_to_text_len(tiny: TinyComponents) -> None:
    embeddings = tiny.prompt_encoder().encode("the red car drives fast " * 10)
    assert embeddings.shape == (1, tiny.text_len, 32)


def test_whitespace_and_html_entities_are_cleaned(tiny: TinyComponents) -> None:
    encoder = tiny.prompt_encoder()
    assert clean_prompt("  a &amp;amp; b\n\t c ") == "a & b c"
    torch.testing.assert_close(encoder.encode("a  cat\n runs "), encoder.encode("a cat runs"))


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_rejected(tiny: TinyComponents, prompt: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny.prompt_encoder().encode(prompt)


def test_dtype_follows_the_request() -> None:
    tiny = build_tiny_components(seed=0)
    encoder = PromptEncoder(tiny.tokenizer, tiny.text_encoder, text_len=8, device="cpu", dtype=torch.float64)
    embeddings = encoder.encode("sun over the sea")
    assert embeddings.dtype == torch.float64 and embeddings.device.type == "cpu"
    assert encoder.text_dim == 32
