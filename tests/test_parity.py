"""Parity with the official Self Forcing / Rolling Forcing / LongLive code on recorded reference cases."""

from __future__ import annotations

import pytest
from conftest import parity_params
from reference_case import load_case


@pytest.mark.parametrize("folder", parity_params())
def test_parity(folder) -> None:
    case = load_case(folder)
    latents = case.run()
    expected = case.tensors["expected_latents"]
    assert latents.shape == expected.shape
    error = (latents - expected).abs().max().item()
    assert error <= case.tolerance, f"{case.name}: max |latents - expected| = {error:.3e} > {case.tolerance}"


@pytest.mark.parametrize("folder", parity_params())
def test_parity_notices_the_wrong_weight_set(folder) -> None:
    """``generator`` holds different weights than ``generator_ema``: loading it must fail the comparison."""
    case = load_case(folder, checkpoint_key="generator")
    error = (case.run() - case.tensors["expected_latents"]).abs().max().item()
    assert error > 100 * case.tolerance
