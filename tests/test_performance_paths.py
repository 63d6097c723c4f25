"""Speed paths against the float32 eager reference, and the benchmark and profile tools that measure them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.models.causal_wan import ROTARY_CACHE_SIZE, ChunkGeometry
from tokentrim_server.models.compile import compile_unavailable_reason
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions, SelfForcingPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import engine  # benchmarks/ is a folder of scripts, not a package
import profile_chunk

PROMPT = "a red cat runs on the beach"
LATENT_SHAPE = (16, 16, 16)
# bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8. The chunk is stored in bfloat16 (one rounding,
# up to u relative) after a few rounded activations whose matmuls accumulate in float32; 4u bounds the whole
# chunk's relative error with room to spare (measured: 0.0041, about 1u) while staying far below the distance
# between the chunks of two differently seeded models (about 0.8), so a wrong cast or a float32-only module
# run in bfloat16 by mistake would show.
BF16_RELATIVE_TOLERANCE = 4 * 2**-8


def _self_forcing_chunks(spec: ModelSpec, chunks: int, prune_before: int | None = None) -> torch.Tensor:
    """``chunks`` Self Forcing chunks of the tiny model (float32 ``[1, F, C, H, W]``); optionally pruned cache."""
    bundle = load_model(spec)
    model = bundle.transformer
    prompt = bundle.prompt_encoder.encode(PROMPT).to(model.device)
    stream = SelfForcingPipeline(model, SelfForcingOptions(local_attn_frames=7)).open(
        prompt, LATENT_SHAPE, SeededNoise(0), chunks
    )
    out = []
    for index in range(chunks):
        if index == prune_before:  # a cache length no chunk geometry gives, as a policy's pruning leaves
            stream.cache.remove_positions(torch.tensor([0, 5, 9]))
        out.append(stream.next_chunk().latents.float())
    return torch.cat(out, dim=1)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def test_bfloat16_self_forcing_matches_float32_within_bf16_rounding() -> None:
    reference = _self_forcing_chunks(ModelSpec(dtype="float32"), chunks=2)
    fast = _self_forcing_chunks(ModelSpec(dtype="bfloat16"), chunks=2)
    other_model = _self_forcing_chunks(ModelSpec(dtype="float32", seed=1), chunks=2)
    assert _relative_error(fast, reference) <= BF16_RELATIVE_TOLERANCE
    assert _relative_error(other_model, reference) > 20 * BF16_RELATIVE_TOLERANCE  # the bound tells models apart


def test_rotary_tables_are_reused_per_geometry_and_bounded() -> None:
    model = load_model(ModelSpec()).transformer
    geometries = [ChunkGeometry(3 * index, 3, 8, 8) for index in range(ROTARY_CACHE_SIZE + 2)]
    first = model.rotary(geometries[0], model.device)
    assert model.rotary(geometries[0], model.device) is first  # every call of a chunk shares one pair
    for geo in geometries:
        tables = model.rotary(geo, model.device)
        fresh = model.rope.tables(geo.frame_start, geo.num_frames, geo.height, geo.width, model.device)
        assert all(torch.equal(a, b) for a, b in zip(tables, fresh, strict=True))
    assert len(model._rotary_cache) == ROTARY_CACHE_SIZE
    assert model.rotary(geometries[0], model.device) is not first  # the oldest geometry was dropped


def test_compile_without_a_compiler_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"compile is not available on cpu: .*C\+\+ compiler"):
        load_model(ModelSpec(compile=True))


def _small(*extra: str) -> list[str]:
    return ["--height", "32", "--width", "32", "--pipeline", "self_forcing", "--chunks", "2", *extra]


def test_engine_benchmark_reports_policy_sessions_latency_and_memory() -> None:
    args = engine.build_parser().parse_args(
        _small("--policy", "tokentrim", "--sessions", "2", "--warmup", "1", "--no-decode")
    )
    (result,) = engine.run(args)
    assert result["policy"] == "tokentrim" and result["sessions"] == 2 and result["compile"] is False
    assert len(result["per_session_frames_per_second"]) == 2
    assert result["frames_per_second"] == pytest.approx(sum(result["per_session_frames_per_second"]))
    assert len(result["session_time_to_first_frame_seconds"]) == 2
    assert result["max_time_to_first_frame_seconds"] == max(result["session_time_to_first_frame_seconds"])
    assert result["cold_time_to_first_frame_seconds"] > 0
    assert 0 < result["p50_chunk_seconds"] <= result["p95_chunk_seconds"]
    assert result["seconds_per_chunk"] == pytest.approx(
        result["denoise_seconds_per_chunk"] + result["decode_seconds_per_chunk"]
    )
    assert result["policy_seconds_per_chunk"] > 0  # TokenTrim summarises every chunk
    assert result["peak_memory_kind"] == "process_max_rss" and result["peak_memory_bytes"] > 0


def test_engine_benchmark_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="--sessions must be > 0"):
        engine.run(engine.build_parser().parse_args(_small("--sessions", "0")))
    with pytest.raises(SystemExit, match="--policy"):
        engine.run(engine.build_parser().parse_args(_small("--policy", "no-such-policy")))


def test_profile_categories_account_for_the_chunk_time() -> None:
    args = profile_chunk.build_parser().parse_args(
        ["--height", "32", "--width", "32", "--chunks", "2", "--warmup", "0", "--policy", "tokentrim"]
    )
    result = profile_chunk.run(args)
    for key in ("categories", "profiled_categories"):
        categories = result[key]
        assert set(categories) == set(profile_chunk.CATEGORIES)
        total = result["chunk_seconds" if key == "categories" else "profiled_chunk_seconds"]
        assert sum(categories.values()) == pytest.approx(total, rel=1e-6)
    profiled = result["profiled_categories"]
    # The profiler's attribution must not count the same time twice: the denoising residual stays >= 0.
    assert profiled["other_denoise"] >= 0
    for name in ("self_attention", "cross_attention", "linear_ffn", "norms_modulation", "kv_cache", "policy",
                 "vae_decode", "frame_encoding"):
        assert profiled[name] > 0, name
    assert profiled["compiled_block"] == 0  # eager run
    # Most of the denoising stage is attributed to a kind of work, not left to the residual.
    denoise = sum(profiled[name] for name in profile_chunk.DENOISE_CATEGORIES)
    assert profiled["other_denoise"] < 0.5 * denoise


@pytest.mark.slow
@pytest.mark.skipif(compile_unavailable_reason("cpu") is not None, reason=str(compile_unavailable_reason("cpu")))
def test_compiled_blocks_match_eager_with_growing_and_pruned_cache() -> None:
    """One compiled graph pair serves every block and every cache length (growth, eviction, pruning)."""
    torch._dynamo.reset()
    reference = _self_forcing_chunks(ModelSpec(), chunks=4, prune_before=3)
    compiled = _self_forcing_chunks(ModelSpec(compile=True), chunks=4, prune_before=3)
    # Inductor reorders and fuses float32 arithmetic: differences stay at float32 rounding, well inside the
    # parity tolerance (1e-4) the reference cases use.
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    # block_qkv once; block_update once static, once more when the key length turns dynamic. Not per block.
    assert graphs <= 3
