"""Video extension: a stream started from given clean chunks (``StreamBase.prefill``)."""

from __future__ import annotations

import pytest
import torch
from policy_support import ScriptedPolicy, rolling_stream, self_forcing_stream, tiny_model

from tokentrim_server.engine import open_runner
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.policies import create_policy


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def cache_contents(stream) -> tuple[list[int], list[torch.Tensor]]:
    cache = stream.cache
    tensors = [tensor for layer in range(cache.num_layers) for tensor in cache.committed(layer)]
    return cache.frames, tensors


@pytest.mark.parametrize("options", [{}, {"local_attn_frames": 9, "sink_frames": 3}], ids=["global", "local_sink"])
def test_self_forcing_prefilled_stream_continues_the_run_exactly(model, options):
    run = list(self_forcing_stream(model, 5, **options))
    stream = self_forcing_stream(model, 5, **options)
    stream.prefill(run[:4])
    assert (stream.emitted, stream.prefilled) == (4, 4)
    (generated,) = list(stream)
    assert generated.index == 4 and generated.frame_start == 12
    torch.testing.assert_close(generated.latents, run[4].latents, rtol=0, atol=0)


def test_self_forcing_prefill_in_two_calls_equals_one(model):
    run = list(self_forcing_stream(model, 3))
    stream = self_forcing_stream(model, 3)
    stream.prefill(run[:1])
    stream.prefill(run[1:2])
    torch.testing.assert_close(stream.next_chunk().latents, run[2].latents, rtol=0, atol=0)


def test_rolling_forcing_prefill_caches_what_the_run_cached(model):
    """Rolling Forcing: the prefilled cache equals the run's after the same blocks, the next block does not.

    The run denoised block 3 jointly with blocks 0..2 while they were still noisy; after a prefill, block 3's
    window starts empty and attends to clean blocks 0..2 (see ``RollingForcingStream.prefill_chunk``).
    """
    plain = rolling_stream(model, 6)
    run = [plain.next_chunk() for _ in range(3)]
    expected_frames, expected = cache_contents(plain)
    stream = rolling_stream(model, 6)
    stream.prefill(run)
    frames, tensors = cache_contents(stream)
    assert frames == expected_frames == list(range(9))
    for actual, wanted in zip(tensors, expected, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0)
    rest = list(stream)
    assert [chunk.index for chunk in rest] == [3, 4, 5]
    assert not torch.allclose(rest[0].latents, plain.next_chunk().latents)


@pytest.mark.parametrize(
    "make, policy",
    [
        (lambda model: self_forcing_stream(model, 5), lambda: create_policy("none")),
        (lambda model: self_forcing_stream(model, 5), lambda: ScriptedPolicy([0, 1], stage="first_step")),
        (lambda model: rolling_stream(model, 5), lambda: ScriptedPolicy([0, 1], stage="final")),
    ],
    ids=["self_forcing_none", "self_forcing_scripted", "rolling_forcing_scripted"],
)
def test_runner_drives_a_prefilled_stream(model, make, policy):
    run = list(make(model))
    stream = make(model)
    stream.prefill(run[:2])
    chosen = policy()
    with open_runner(stream, chosen) as runner:
        results = list(runner)
    assert [result.chunk.index for result in results] == [2, 3, 4]
    if isinstance(chosen, ScriptedPolicy):
        # The first generated chunk has nothing to drift from; later ones compare with generated chunks only.
        firsts = [c for c in chosen.seen.candidates if c.chunk == 2]
        assert firsts and all(c.previous is None for c in firsts)
        assert not results[0].report.triggered and results[1].report.triggered


def test_prefill_refuses_bad_chunks(model):
    run = list(self_forcing_stream(model, 3))
    stream = self_forcing_stream(model, 3)
    with pytest.raises(ValueError, match="chunks must hold at least one"):
        stream.prefill([])
    with pytest.raises(ValueError, match=r"chunks must be consecutive blocks from block 0: chunks\[0\] is block 1"):
        stream.prefill(run[1:2])
    with pytest.raises(ValueError, match=r"chunks\[1\] is block 2"):
        stream.prefill([run[0], run[2]])
    wrong = Chunk(0, 0, run[0].latents[:, :2])
    with pytest.raises(ValueError, match=r"chunks\[0\]\.latents must have the stream's block shape"):
        stream.prefill([wrong])
    with pytest.raises(ValueError, match="would exceed the stream's num_blocks 2"):
        self_forcing_stream(model, 2).prefill(run)
    assert stream.emitted == 0 and stream.cache.stats().tokens == 0  # nothing was written


@pytest.mark.parametrize("make", [self_forcing_stream, rolling_stream], ids=["self_forcing", "rolling_forcing"])
def test_prefill_after_generation_is_refused(model, make):
    run = list(make(model, 3))
    stream = make(model, 3)
    stream.next_chunk()
    started = r"before the first generated chunk; this stream has started generating \(1 chunk"
    with pytest.raises(ValueError, match=started):
        stream.prefill(run[1:2])


def test_rolling_forcing_prefill_refused_while_a_window_is_in_flight(model):
    run = list(rolling_stream(model, 3))
    stream = rolling_stream(model, 3)
    assert stream.step_window() is None  # block 0 entered the window, nothing emitted yet
    with pytest.raises(ValueError, match="before the first generated chunk"):
        stream.prefill(run[:1])
