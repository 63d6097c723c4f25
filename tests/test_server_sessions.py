"""End-to-end sessions over real gRPC on localhost: streaming, concurrency, prompt changes, flow control, stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from google.protobuf.struct_pb2 import Struct
from PIL import Image
from tokentrim.v1 import streaming_pb2 as pb

from tests.server_support import SIZE, RawSession, ServerThread, start


@pytest.fixture
def server(tiny_bundle):
    with ServerThread(tiny_bundle, "--max-sessions", "8") as running:
        yield running


def test_session_streams_every_chunk_then_ends(server):
    session = RawSession(server.stub, start(chunks=3))
    started = session.next().started
    assert (started.height, started.width, started.chunks, started.seed) == (SIZE, SIZE, 3, 7)
    assert started.pipeline == "self_forcing" and started.cache_policy == "none" and started.frames_per_second == 16
    chunks = list(session.chunks())
    assert [chunk.index for chunk in chunks] == [0, 1, 2]
    assert [chunk.frame_count for chunk in chunks] == [9, 12, 12]  # the causal VAE's first latent frame is 1 frame
    assert [chunk.first_frame for chunk in chunks] == [0, 9, 21]
    image = Image.open(__import__("io").BytesIO(chunks[1].jpeg_frames[0]))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert chunks[2].timings.denoise_seconds > 0 and chunks[2].timings.decode_seconds > 0
    assert chunks[2].cache_report.cache_tokens_before > 0
    assert session.ended.reason == pb.END_REASON_COMPLETED and session.ended.frames == 33
    server.wait_idle()


def test_same_seed_same_video_and_encodings_agree(server):
    raw_rgb = start(output=pb.OutputFormat(encoding=pb.ENCODING_RAW_RGB))
    raw = [c.rgb for c in RawSession(server.stub, raw_rgb).chunks()]
    again = [c.rgb for c in RawSession(server.stub, raw_rgb).chunks()]
    assert raw == again
    frames = np.frombuffer(raw[1], np.uint8).reshape(12, SIZE, SIZE, 3)
    latents = list(RawSession(server.stub, start(output=pb.OutputFormat(encoding=pb.ENCODING_LATENTS))).chunks())
    tensor = latents[1].latents
    assert tensor.shape[0] == 3 and tensor.dtype == "float32"
    assert len(tensor.data) == 4 * int(np.prod(tensor.shape))
    assert frames.std() > 0


def test_concurrent_sessions_all_complete_and_are_served_fairly(server):
    results: dict[int, list[pb.Chunk]] = {}

    def run(seed: int) -> None:
        results[seed] = list(RawSession(server.stub, start(seed=seed, chunks=3)).chunks())

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(len(chunks) == 3 for chunks in results.values())
    # Different seeds, different videos: sessions do not share state.
    assert len({chunks[0].jpeg_frames[0] for chunks in results.values()}) == 4
    server.wait_idle()


def test_prompt_change_applies_at_the_next_chunk_boundary(server):
    latents = pb.OutputFormat(encoding=pb.ENCODING_LATENTS)
    plain = list(RawSession(server.stub, start(chunks=4, output=latents)).chunks())
    session = RawSession(server.stub, start(chunks=4, initial_credits=1, output=latents))
    session.next()  # started
    changed = []
    for chunk in session.chunks(grant=False):
        changed.append(chunk)
        if chunk.index == 1:
            session.send(change_prompt=pb.ChangePrompt(prompt="a blue cube in the snow"))
        session.grant()
    assert [c.prompt_version for c in changed] == [0, 0, 1, 1]
    assert changed[2].timings.prompt_change_seconds > 0
    assert [c.latents.data for c in changed[:2]] == [c.latents.data for c in plain[:2]]
    assert changed[2].latents.data != plain[2].latents.data


def test_server_never_runs_ahead_of_the_granted_credit(server):
    session = RawSession(server.stub, start(chunks=6, initial_credits=1))
    session.next()  # started
    first = session.next().chunk
    assert first.index == 0
    time.sleep(1.0)  # long enough for several tiny chunks, were the server not waiting for credit
    (running,) = server.service.sessions
    assert running.driver.generation.runner.stream.emitted == 1
    session.grant(2)
    assert [session.next().chunk.index for _ in range(2)] == [1, 2]
    time.sleep(0.5)
    assert running.driver.generation.runner.stream.emitted == 3
    session.send(stop=pb.StopSession())
    assert session.next().ended.reason == pb.END_REASON_STOPPED
    server.wait_idle()


def test_stop_mid_stream_ends_after_the_chunk_in_progress(server):
    session = RawSession(server.stub, start(chunks=0, initial_credits=2))
    session.next()
    for chunk in session.chunks():
        if chunk.index == 2:
            session.send(stop=pb.StopSession())
    assert session.ended.reason == pb.END_REASON_STOPPED
    assert session.ended.chunks >= 3
    server.wait_idle()


def test_closing_the_request_stream_stops_the_session(server):
    session = RawSession(server.stub, start(chunks=0, initial_credits=1))
    session.next()
    session.close_requests()
    responses = list(session.call)
    assert responses[-1].ended.reason == pb.END_REASON_STOPPED
    server.wait_idle()


def test_cache_policy_reports_reach_the_client(server):
    params = Struct()
    params.update({"prune_ratio": 0.1, "sensitivity": 0.0, "warmup": 1, "candidate": "first_step"})
    chunks = list(RawSession(server.stub, start(chunks=4, cache_policy=pb.PluginConfig(name="tokentrim",
                                                                                        params=params))).chunks())
    reports = [chunk.cache_report for chunk in chunks]
    assert all(report.policy == "tokentrim" for report in reports)
    assert reports[0].HasField("severity") is False  # nothing to compare the first chunk with
    assert all(report.HasField("severity") for report in reports[1:])
