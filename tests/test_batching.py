"""Sessions stepped together run their model calls batched, and each gets the chunks it gets alone; chunks of
several streams decode together as each alone (issue #18).

Float32 on the CPU: a batched chunk equals the same chunk run alone within 1e-5 (batched matrix products may
round differently from one-row ones; nothing else differs), whatever it is batched with; decoded frames within
1e-4 (batched convolutions).
"""

from __future__ import annotations

import pytest
import torch
from policy_support import ScriptedPolicy

from tokentrim_server.engine.batching import BatchRunner
from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.models.vae import DecodeCall, StreamingVaeDecoder, decode_together
from tokentrim_server.pipelines.rolling_forcing import RollingForcingOptions
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions
from tokentrim_server.policies.none import NonePolicy

CHUNKS = 3
TOLERANCE = {"rtol": 0.0, "atol": 1e-5}
# Pixels in [-1, 1]: batched convolutions round differently (measured up to 1.5e-5), 1/80 of a uint8 level.
DECODE_TOLERANCE = {"rtol": 0.0, "atol": 1e-4}


def plan(
    seed: int, size: int = 32, pipeline: str = "self_forcing", policy=None, prompt: str = "a red car"
) -> SessionPlan:
    options = SelfForcingOptions(local_attn_frames=7) if pipeline == "self_forcing" else RollingForcingOptions()
    return SessionPlan(prompt, seed, pipeline, options, CHUNKS, size, size, policy or NonePolicy(), decode=False)


def alone(bundle, session_plan: SessionPlan) -> list[torch.Tensor]:
    session = GenerationSession(bundle, session_plan)
    try:
        return [session.step().result.chunk.latents for _ in range(CHUNKS)]
    finally:
        session.close()


def together(bundle, plans: list[SessionPlan]) -> tuple[list[list[torch.Tensor]], list[int]]:
    """Every session's chunks, stepped together chunk by chunk; and the sizes of the batched model calls."""
    sessions = [GenerationSession(bundle, session_plan) for session_plan in plans]
    runner = BatchRunner(len(sessions))
    chunks: list[list[torch.Tensor]] = [[] for _ in sessions]
    sizes: list[int] = []
    try:
        for _ in range(CHUNKS):
            steps, batch_sizes = runner.run([session.step_job() for session in sessions])
            sizes += batch_sizes
            for produced, step in zip(chunks, steps, strict=True):
                produced.append(step.result().result.chunk.latents)
    finally:
        runner.shutdown()
        for session in sessions:
            session.close()
    return chunks, sizes


def test_a_batched_chunk_equals_the_same_chunk_alone(tiny_bundle):
    plans = [plan(1, prompt="a red car"), plan(2, prompt="a blue boat"), plan(3, prompt="a green tree")]
    batched, sizes = together(tiny_bundle, plans)
    # Self Forcing's 4 denoising calls and the cache write of each chunk ran as one call for all three.
    assert sizes == [3] * (5 * CHUNKS)
    for session_plan, produced in zip(plans, batched, strict=True):
        for own, chunk in zip(alone(tiny_bundle, session_plan), produced, strict=True):
            torch.testing.assert_close(chunk, own, **TOLERANCE)
    assert not torch.allclose(batched[0][0], batched[1][0])  # the sessions really differ


def test_a_seed_gives_the_same_video_whatever_else_runs(tiny_bundle):
    reference = alone(tiny_bundle, plan(7))
    with_one, _ = together(tiny_bundle, [plan(7), plan(8)])
    with_others, _ = together(tiny_bundle, [plan(9), plan(10, size=48), plan(7), plan(11, pipeline="rolling_forcing")])
    for produced in (with_one[0], with_others[2]):
        for own, chunk in zip(reference, produced, strict=True):
            torch.testing.assert_close(chunk, own, **TOLERANCE)


def test_only_compatible_calls_share_a_model_call(tiny_bundle):
    # Two 32x32 sessions batch; the 48x48 one runs its calls alone in the same rounds.
    _, sizes = together(tiny_bundle, [plan(1), plan(2, size=48), plan(3)])
    assert sorted(set(sizes)) == [1, 2]
    assert sizes.count(2) == sizes.count(1) == 5 * CHUNKS


def test_a_regenerating_session_still_gets_its_own_chunks(tiny_bundle):
    # The scripted policy prunes and regenerates chunks 1 and 2: extra calls the other session does not make.
    def pruning() -> ScriptedPolicy:
        return ScriptedPolicy(positions=[0, 3], trigger_chunks={1, 2})

    reference = alone(tiny_bundle, plan(4, policy=pruning()))
    batched, sizes = together(tiny_bundle, [plan(5), plan(4, policy=pruning())])
    for own, chunk in zip(reference, batched[1], strict=True):
        torch.testing.assert_close(chunk, own, **TOLERANCE)
    assert 1 in sizes and 2 in sizes


class FailingPolicy(ScriptedPolicy):
    """Raises when it inspects chunk 1 (after the batched first-step call of that chunk)."""

    def inspect(self, candidate, cache):
        if candidate.chunk == 1:
            raise RuntimeError("policy failed")
        return super().inspect(candidate, cache)


def test_a_failing_session_fails_alone(tiny_bundle):
    sessions = [
        GenerationSession(tiny_bundle, plan(1)),
        GenerationSession(tiny_bundle, plan(2, policy=FailingPolicy([0]))),
    ]
    runner = BatchRunner(2)
    try:
        runner.run([session.step_job() for session in sessions])
        steps, sizes = runner.run([session.step_job() for session in sessions])
        with pytest.raises(RuntimeError, match="policy failed"):
            steps[1].result()
        assert sizes == [2, 1, 1, 1, 1]  # the first step together, then the healthy session's chunk alone
        torch.testing.assert_close(steps[0].result().result.chunk.latents, alone(tiny_bundle, plan(1))[1], **TOLERANCE)
    finally:
        runner.shutdown()
        for session in sessions:
            session.close()


def test_chunks_decoded_together_equal_each_stream_decoded_alone(tiny_bundle):
    # Each stream keeps its own causal decoder context across chunks, batched or not.
    latent_shape = tiny_bundle.latent_shape(32, 32)
    videos = [torch.randn(1, 9, *latent_shape, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    alone_decoders = [StreamingVaeDecoder(tiny_bundle.vae) for _ in videos]
    together_decoders = [StreamingVaeDecoder(tiny_bundle.vae) for _ in videos]
    for start in range(0, 9, 3):
        chunks = [video[:, start : start + 3] for video in videos]
        calls = [DecodeCall(decoder, chunk) for decoder, chunk in zip(together_decoders, chunks, strict=True)]
        batched = decode_together(calls)
        for decoder, chunk, frames in zip(alone_decoders, chunks, batched, strict=True):
            torch.testing.assert_close(frames, decoder.decode_chunk(chunk), **DECODE_TOLERANCE)
    with pytest.raises(ValueError, match="causal contexts of one shape"):  # a new stream is not in step
        decode_together([DecodeCall(StreamingVaeDecoder(tiny_bundle.vae), videos[0][:, :3]),
                         DecodeCall(together_decoders[0], videos[0][:, :3])])
