"""The playout clock (a session's simulated viewer), real-time admission, and the metrics they feed (issue #18)."""

from __future__ import annotations

import grpc
import pytest
from server_support import RawSession, ServerThread, rpc_error, start
from test_device_worker import FakeClock
from test_server_operations import scrape

from tokentrim_server.engine.admission import Admission, AdmissionError, RealtimeMeter
from tokentrim_server.engine.playout import PlayoutClock, PlayoutTiming


def test_the_viewer_stalls_when_a_chunk_is_late_and_plays_on_from_there():
    clock = FakeClock()
    viewer = PlayoutClock(fps=16.0, prebuffer_seconds=0.5, clock=clock)
    arrivals = [(1.0, 0.5, 0.0, False), (2.0, 0.5, 0.0, False), (4.0, -0.5, 0.5, True), (4.8, 0.2, 0.0, True)]
    for arrival, slack, stall, missed in arrivals:  # a second of video (16 frames) per chunk
        clock.now = arrival
        assert viewer.deliver(16) == PlayoutTiming(16, pytest.approx(slack), pytest.approx(stall), missed)
    # The third chunk was due at 1.0 + 0.5 + 2 s of video = 3.5: the viewer waited 0.5 s. The fourth was due at
    # 5.0 after that stall (no stall), but 4.5 on the fixed clock (a deadline miss).
    assert (viewer.stalls, viewer.stall_seconds, viewer.deadline_misses) == (1, pytest.approx(0.5), 2)
    assert viewer.realtime_factor() == pytest.approx(4.0 / 4.8)


def test_slack_counts_the_chunks_produced_but_not_yet_delivered():
    clock = FakeClock()
    viewer = PlayoutClock(fps=16.0, prebuffer_seconds=0.5, clock=clock)
    clock.now = 0.3
    assert viewer.slack() == pytest.approx(-0.3)  # waiting for its first chunk
    viewer.produced(16)
    viewer.deliver(16)
    viewer.produced(16)  # being rendered: the next frame to produce is the 33rd
    assert viewer.slack() == pytest.approx(0.5 + 2.0)
    viewer.restart()  # a resumed client waits for its first chunk again
    clock.now = 1.0
    assert viewer.slack() == pytest.approx(-0.7)


def test_real_time_admission_refuses_what_the_measured_throughput_cannot_play():
    meter = RealtimeMeter(fps=16.0)
    admission = Admission(max_sessions=8, cache_budget_bytes=100, realtime=meter)
    first = admission.admit(1)
    second = admission.admit(1)  # nothing measured yet
    meter.record(frames=48, seconds=1.0)  # 48 frames/s: three sessions at 16 frames/s, not four
    third = admission.admit(1)
    with pytest.raises(AdmissionError, match="4 sessions at 16 frames/s need 64 frames/s") as refused:
        admission.admit(1)
    assert refused.value.limit == "realtime"
    for reservation in (first, second, third):
        admission.release(reservation)
    meter.record(frames=0, seconds=1000.0)  # far too slow for two sessions, but one alone is always admitted
    admission.release(admission.admit(1))


def test_the_server_refuses_sessions_beyond_real_time_and_reports_playout(tiny_bundle):
    with ServerThread(tiny_bundle, "--realtime-admission", "--max-sessions", "4") as server:
        running = RawSession(server.stub, start(chunks=0, initial_credits=1))
        assert running.next().WhichOneof("response") == "started"
        chunk = running.next().chunk
        assert chunk.slack_seconds == pytest.approx(0.5, abs=0.05)  # the first chunk: the pre-buffer ahead
        server.service.admission.realtime.record(frames=16, seconds=100.0)  # measured: far below real time
        refused = rpc_error(lambda: RawSession(server.stub, start()).next())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "real-time admission" in refused.details()
        running.send(stop={})
        list(running.chunks(grant=False))
        server.wait_idle()
        metrics = scrape(server)
    assert 'tokentrim_sessions_rejected_total{reason="realtime"} 1.0' in metrics
    assert "tokentrim_chunk_slack_seconds_count{pipeline=\"self_forcing\"} 1.0" in metrics
    assert "tokentrim_scheduler_batch_size_count 1.0" in metrics
    assert 'tokentrim_session_realtime_factor_count{pipeline="self_forcing"} 1.0' in metrics
    assert "tokentrim_scheduler_queue_depth 0.0" in metrics
    for series in ("tokentrim_viewer_stalls_total", "tokentrim_viewer_stall_seconds_total",
                   "tokentrim_chunk_deadline_misses_total"):
        assert f'{series}{{pipeline="self_forcing"}}' in metrics
