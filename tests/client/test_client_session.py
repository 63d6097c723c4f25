"""Sessions against the fake server: decoding, flow control, prompt changes, stop, auth, the blocking client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim_client import AsyncClient, Client, ReceivedChunk

from .fake_streaming_server import DEFAULT_CREDITS, FakeServer, expected_latents, expected_rgb


async def _collect(target: str, **options) -> tuple[list[ReceivedChunk], pb.SessionStarted, pb.SessionEnded | None]:
    async with AsyncClient(target) as client, client.session("a red car", **options) as session:
        chunks = [chunk async for chunk in session]
        return chunks, session.started, session.ended


def test_jpeg_chunks_decode_to_rgb_frames(fake_server: FakeServer) -> None:
    chunks, started, ended = asyncio.run(_collect(fake_server.target, chunks=3, jpeg_quality=95))
    service = fake_server.service
    assert started.height == service.height and started.width == service.width
    assert [c.index for c in chunks] == [0, 1, 2]
    for chunk in chunks:
        want = expected_rgb(chunk.index, service.frames_per_chunk, service.height, service.width)
        assert chunk.frames is not None and chunk.frames.dtype == np.uint8 and chunk.frames.shape == want.shape
        assert np.abs(chunk.frames.astype(int) - want).max() <= 8  # JPEG is lossy, flat colours barely
        assert chunk.latents is None
    assert ended is not None and ended.reason == pb.END_REASON_COMPLETED and ended.chunks == 3
    assert service.sessions[0].start.output.jpeg_quality == 95


def test_raw_chunks_decode_exactly_with_the_started_size(fake_server: FakeServer) -> None:
    chunks, started, _ = asyncio.run(_collect(fake_server.target, chunks=2, encoding="raw", height=8, width=10))
    assert (started.height, started.width) == (8, 10)
    for chunk in chunks:
        np.testing.assert_array_equal(chunk.frames, expected_rgb(chunk.index, 3, 8, 10))


def test_latent_chunks_decode_to_float32_tensors(fake_server: FakeServer) -> None:
    chunks, _, _ = asyncio.run(_collect(fake_server.target, chunks=2, encoding="latents"))
    for chunk in chunks:
        assert chunk.frames is None
        assert chunk.latents is not None and chunk.latents.dtype == np.float32
        np.testing.assert_array_equal(chunk.latents, expected_latents(chunk.index, 3))


def test_report_timings_and_hook_reports_are_plain_values(fake_server: FakeServer) -> None:
    chunks, _, _ = asyncio.run(_collect(fake_server.target, chunks=2))
    first, second = chunks
    assert first.report["policy"] == "fake" and first.report["severity"] is None and not first.report["triggered"]
    assert second.report["severity"] == 0.75 and second.report["triggered"] and second.report["tokens_removed"] == 10
    assert first.timings["denoise_seconds"] == 0.5 and first.timings["prompt_change_seconds"] == 0.0
    assert first.hook_reports == [{"name": "flowmo", "seconds": pytest.approx(0.1), "values": {"loss_before": 2.0}}]
    assert second.hook_reports == []
    assert first.message.index == 0 and first.first_frame == 0 and second.first_frame == 3


def test_start_message_carries_every_option(fake_server: FakeServer) -> None:
    options = {
        "chunks": 1,
        "seed": 42,
        "pipeline": "rolling_forcing",
        "pipeline_options": {"local_attn_frames": 21},
        "cache_policy": "tokentrim",
        "policy_params": {"threshold": 0.5, "mode": "fast"},
        "hooks": [("flowmo", {"steps": 4}), "other"],
        "credits": 3,
    }
    _, started, _ = asyncio.run(_collect(fake_server.target, **options))
    start = fake_server.service.sessions[0].start
    assert start.prompt == "a red car" and start.seed == 42 and start.pipeline == "rolling_forcing"
    assert dict(start.pipeline_options) == {"local_attn_frames": 21}
    assert start.cache_policy.name == "tokentrim" and dict(start.cache_policy.params) == options["policy_params"]
    assert [h.name for h in start.session_hooks] == ["flowmo", "other"]
    assert dict(start.session_hooks[0].params) == {"steps": 4}
    assert start.initial_credits == 3 and started.credits == 3 and started.seed == 42


def test_credits_are_returned_only_as_chunks_are_consumed(fake_server: FakeServer) -> None:
    service = fake_server.service
    service.chunk_delay = 0.002
    credits = 2

    async def consume_slowly() -> list[int]:
        ahead = []
        async with AsyncClient(fake_server.target) as client, client.session("p", chunks=8, credits=credits) as session:
            pulled = 0
            async for _ in session:
                pulled += 1
                await asyncio.sleep(0.03)  # a slow consumer: the server would run ahead if it could
                ahead.append(service.sessions[0].chunks_sent - pulled)
        return ahead

    ahead = asyncio.run(consume_slowly())
    record = service.sessions[0]
    assert max(ahead) <= credits - 1  # while the caller holds a chunk, at most credit-1 more are generated
    assert max(ahead) == credits - 1  # ... and the server did use the credit it had
    assert record.max_credit <= credits  # the client never granted ahead of consumption
    # One credit per consumed chunk; those sent after the server needed no more may arrive after it finished.
    assert set(record.grants) == {1} and 8 - credits <= len(record.grants) <= 7


def test_default_credit_is_the_servers(fake_server: FakeServer) -> None:
    _, started, _ = asyncio.run(_collect(fake_server.target, chunks=1))
    assert fake_server.service.sessions[0].start.initial_credits == 0 and started.credits == DEFAULT_CREDITS


def test_prompt_change_and_stop_are_sent(fake_server: FakeServer) -> None:
    fake_server.service.chunk_delay = 0.01

    async def steer() -> tuple[list[ReceivedChunk], pb.SessionEnded | None]:
        async with AsyncClient(fake_server.target) as client, client.session("p", credits=1) as session:
            received = []
            async for chunk in session:
                received.append(chunk)
                if chunk.index == 1:
                    await session.change_prompt("a blue car")
                if chunk.index == 3:
                    await session.stop()
                    await session.stop()  # idempotent
            return received, session.ended

    received, ended = asyncio.run(steer())
    record = fake_server.service.sessions[0]
    assert record.prompt_changes == ["a blue car"] and record.stop_received
    assert [c.prompt_version for c in received] == [0, 0, 1, 1]  # credit 1: applied at the very next chunk
    assert ended is not None and ended.reason == pb.END_REASON_STOPPED and ended.chunks == 4


def test_leaving_early_ends_the_session_on_the_server(fake_server: FakeServer) -> None:
    """Leaving sends stop (so a server holding dropped sessions frees this one at once), then cancels."""
    async def leave() -> None:
        async with AsyncClient(fake_server.target) as client, client.session("p") as session:
            async for _ in session:
                break
        await asyncio.sleep(0.1)  # let the cancellation reach the server

    asyncio.run(leave())
    record = fake_server.service.sessions[0]
    assert record.stop_received or record.cancelled


def test_bearer_token_is_sent_on_every_call(fake_server: FakeServer) -> None:
    fake_server.service.required_token = "s3cret"

    async def calls() -> pb.GetServerInfoResponse:
        async with AsyncClient(fake_server.target, token="s3cret") as client:
            async with client.session("p", chunks=1) as session:
                _ = [chunk async for chunk in session]
            return await client.server_info()

    info = asyncio.run(calls())
    assert info.model == "fake"
    assert fake_server.service.sessions[0].metadata["authorization"] == "Bearer s3cret"
    assert fake_server.service.info_metadata[0]["authorization"] == "Bearer s3cret"


def test_health(fake_server: FakeServer) -> None:
    async def check() -> bool:
        async with AsyncClient(fake_server.target) as client:
            return await client.health()

    assert asyncio.run(check()) is True
    fake_server.set_serving(False)
    assert asyncio.run(check()) is False


def test_blocking_client_has_the_same_surface(fake_server: FakeServer) -> None:
    with Client(fake_server.target) as client:
        assert client.server_info().model == "fake" and client.health()
        with client.session("p", credits=1, encoding="raw") as session:
            assert session.started is not None and session.started.session_id == "fake-1"
            for chunk in session:
                if chunk.index == 0:
                    session.change_prompt("q")
                if chunk.index == 2:
                    session.stop()
        assert session.ended is not None and session.ended.reason == pb.END_REASON_STOPPED
        assert session.stats.chunks == 3 and session.stats.prune_events == 1
        result = client.generate("p", chunks=2)
    assert [c.index for c in result.chunks] == [0, 1] and result.frames is not None and result.frames.shape[0] == 6
    assert fake_server.service.sessions[0].prompt_changes == ["q"]
