"""The engine side of cache policies: parity with `none`, regeneration with the same noise, sink safety."""

from __future__ import annotations

import pytest
import torch
from policy_support import (
    REFERENCE_ROOT,
    ScriptedPolicy,
    rolling_stream,
    self_forcing_stream,
    tiny_model,
)
from reference_case import load_case

from tokentrim_server.engine import open_runner
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.policies import create_policy, latent_summary

TOKENS = 24  # per latent frame of the 16x8x12 latent
PRUNED = [0, 5, 7, 23]


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    return tiny_model()


def _run(runner) -> tuple[torch.Tensor, list]:
    results = list(runner)
    runner.close()
    return torch.cat([r.chunk.latents for r in results], dim=1), [r.report for r in results]


# ---------------------------------------------------------------------------------------- baseline parity
@pytest.mark.parametrize(
    "folder",
    [
        pytest.param(REFERENCE_ROOT / name, id=name)
        for name in ("self_forcing_global_9f", "rolling_forcing_18f")
        if (REFERENCE_ROOT / name / "case.json").is_file()
    ],
)
def test_none_policy_gives_the_plain_pipeline_output(folder) -> None:
    case = load_case(folder)
    plain = case.run()
    latents, reports = _run(open_runner(case.open(), create_policy("none")))
    assert torch.equal(latents, plain)
    torch.testing.assert_close(latents, case.tensors["expected_latents"], atol=case.tolerance, rtol=0)
    assert not any(r.triggered or r.tokens_removed or r.regenerations for r in reports)
    assert all(r.decision_seconds == 0 for r in reports)


# ---------------------------------------------------------------------------------------- Self Forcing
class RecordingNoise(SeededNoise):
    """Seeded noise that remembers every initial draw."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.initial_draws: list[tuple[int, torch.Tensor]] = []

    def initial(self, block, shape, device, dtype):
        tensor = super().initial(block, shape, device, dtype)
        self.initial_draws.append((block, tensor))
        return tensor


def _manual_prune_run(model, blocks: int, prune_at: int, **options) -> torch.Tensor:
    """The plain pipeline, with ``PRUNED`` removed from the cache by hand just before block ``prune_at``."""
    stream = self_forcing_stream(model, blocks, **options)
    chunks = []
    for block in range(blocks):
        stream.prepare_block()
        if block == prune_at:
            stream.cache.remove_positions(torch.tensor(PRUNED))
        chunks.append(stream.commit(stream.finish(stream.first_step())).latents)
    stream.close()
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("stage", ["first_step", "final"])
def test_forced_trigger_prunes_and_regenerates_with_the_same_noise(model, stage) -> None:
    stream = self_forcing_stream(model, 3)
    noise = RecordingNoise(stream.noise.seed)
    stream.noise = noise
    policy = ScriptedPolicy(PRUNED, trigger_chunks={2}, stage=stage)
    latents, reports = _run(open_runner(stream, policy))

    # Identical to a plain run whose cache lost the same tokens before block 2: the regeneration used the
    # block's own keyed noise, against the pruned context.
    assert torch.equal(latents, _manual_prune_run(model, 3, prune_at=2))
    draws = [tensor for block, tensor in noise.initial_draws if block == 2]
    assert len(draws) == 2 and torch.equal(draws[0], draws[1])
    report = reports[2]
    assert report.triggered and report.regenerations == 1
    assert report.tokens_removed == len(PRUNED) * 6  # every cached frame of blocks 0 and 1
    assert (report.cache_tokens_before, report.cache_tokens_after) == (6 * TOKENS, 6 * (TOKENS - len(PRUNED)))
    assert report.cache_bytes_after < report.cache_bytes_before
    assert [c.attempt for c in policy.seen.candidates if c.chunk == 2] == [0, 1]
    assert policy.seen.started == policy.seen.ended == 1


def test_previous_summary_is_taken_at_the_policy_stage(model) -> None:
    for stage in ("first_step", "final"):
        policy = ScriptedPolicy([], trigger_chunks=set(), stage=stage)
        _run(open_runner(self_forcing_stream(model, 3), policy))
        accepted, candidates = policy.seen.accepted, policy.seen.candidates
        assert candidates[0].previous is None
        for candidate in candidates[1:]:
            assert torch.equal(candidate.previous, accepted[candidate.chunk - 1].summary)
        final_summary = latent_summary(accepted[1].latents, model.patch_size)
        # first_step compares first-step x0 with first-step x0; final compares finished chunks.
        assert torch.equal(accepted[1].summary, final_summary) == (stage == "final")


@pytest.mark.parametrize("limit", [0, 2])
def test_chunk_is_accepted_after_max_regenerations(model, limit) -> None:
    policy = ScriptedPolicy(PRUNED, stage="first_step", max_regenerations=limit)  # triggers on every attempt
    _, reports = _run(open_runner(self_forcing_stream(model, 3), policy))
    assert [r.regenerations for r in reports] == [0, limit, limit]
    assert [r.triggered for r in reports] == [False, limit > 0, limit > 0]
    assert [c.attempt for c in policy.seen.candidates if c.chunk == 1] == list(range(limit + 1))
    assert [a.regenerations for a in policy.seen.accepted] == [0, limit, limit]
    assert policy.seen.accepted[1].decision.triggered  # accepted although it still triggers


def test_sink_frames_are_never_touched_by_self_forcing_pruning(model) -> None:
    options = {"local_attn_frames": 9, "sink_frames": 3}
    stream = self_forcing_stream(model, 5, **options)
    runner = open_runner(stream, ScriptedPolicy(list(range(TOKENS))))  # prune every position each chunk
    next(runner)
    sink = [tuple(t.clone() for t in stream.cache.committed(layer, 0, 3 * TOKENS)) for layer in range(2)]
    reports = [result.report for result in runner]
    assert reports[0].tokens_removed == 0  # block 1 sees only the sink
    assert all(r.triggered and r.tokens_removed > 0 for r in reports[1:])
    for frame in range(3):
        assert stream.cache.positions_of(frame).tolist() == list(range(TOKENS))
    for layer, (k, v) in enumerate(sink):
        cached_k, cached_v = stream.cache.committed(layer, 0, 3 * TOKENS)
        assert torch.equal(cached_k, k) and torch.equal(cached_v, v)
    runner.close()


# ---------------------------------------------------------------------------------------- Rolling Forcing
# Windows of 3 blocks that also see one cached block besides the sink, so pruning can matter.
ROLLING = {"cache_frames": 15, "attention_frames": 15, "denoising_steps": (1000, 600, 200)}


def test_rolling_regeneration_rewinds_the_window_exactly(model) -> None:
    plain = torch.cat([chunk.latents for chunk in rolling_stream(model, 6, **ROLLING)], dim=1)
    # A trigger that removes nothing must regenerate exactly what the plain pipeline emits, every block.
    policy = ScriptedPolicy([], stage="final")
    latents, reports = _run(open_runner(rolling_stream(model, 6, **ROLLING), policy))
    assert torch.equal(latents, plain)
    assert [r.regenerations for r in reports] == [0, 1, 1, 1, 1, 1]


def test_rolling_pruning_touches_recent_context_only(model) -> None:
    plain = torch.cat([chunk.latents for chunk in rolling_stream(model, 6, **ROLLING)], dim=1)
    stream = rolling_stream(model, 6, **ROLLING)
    runner = open_runner(stream, ScriptedPolicy(PRUNED, trigger_chunks={3}, stage="final"))
    results = []
    for result in runner:
        results.append(result)
        if result.chunk.index == 0:
            sink = [tuple(t.clone() for t in stream.cache.committed(layer, 0, 3 * TOKENS)) for layer in range(2)]
    latents = torch.cat([r.chunk.latents for r in results], dim=1)
    assert torch.equal(latents[:, :9], plain[:, :9])  # blocks before the trigger are untouched
    assert not torch.equal(latents[:, 9:12], plain[:, 9:12])  # the regenerated block saw a pruned context
    report = results[3].report
    assert report.triggered and report.tokens_removed == len(PRUNED) * 6  # blocks 1 and 2, not the sink
    for layer, (k, v) in enumerate(sink):
        cached_k, cached_v = stream.cache.committed(layer, 0, 3 * TOKENS)
        assert torch.equal(cached_k, k) and torch.equal(cached_v, v)
    runner.close()


def test_rolling_refuses_first_step_candidates(model) -> None:
    with pytest.raises(ValueError, match="candidate=final"):
        open_runner(rolling_stream(model, 2, **ROLLING), ScriptedPolicy([], stage="first_step"))


# ---------------------------------------------------------------------------------------- the plugin policies
def test_tokentrim_and_random_policies_end_to_end(model) -> None:
    pytest.importorskip("tokentrim_plugin", reason="install plugins/tokentrim (make install)")
    params = {"sensitivity": 0.0, "warmup": 1}  # a low threshold, so some chunks trigger
    runs = {}
    for name in ("tokentrim", "random", "random"):
        policy = create_policy(name, params)
        latents, reports = _run(open_runner(self_forcing_stream(model, 6), policy))
        accepted = [r.severity for r in reports if r.severity is not None]
        # Exactly the accepted chunks' severities entered the statistics.
        assert policy.detector.count == len(accepted) == 5
        assert policy.detector.mean == pytest.approx(sum(accepted) / len(accepted))
        for report in reports:
            budget = 3  # ceil(0.1 * 24)
            frames = min(report.chunk, 6) * 3
            # Positions pruned by an earlier trigger are gone already, so a trigger removes at most this.
            assert (0 < report.tokens_removed <= budget * frames) if report.triggered else not report.tokens_removed
        assert any(r.triggered for r in reports)
        runs.setdefault(name, []).append(latents)
    assert torch.equal(runs["random"][0], runs["random"][1])  # seeded from the session seed: reproducible
