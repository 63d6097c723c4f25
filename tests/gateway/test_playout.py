"""The playout track on its own: pacing at the session's rate, stalls, late frames dropped, buffer accounting."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
from tokentrim_gateway.metrics import GatewayMetrics
from tokentrim_gateway.playout import VIDEO_CLOCK_RATE, PlayoutTrack

FPS = 16.0


def frames(count: int, start: int = 0) -> np.ndarray:
    """Frames whose top-left pixel says which one it is."""
    batch = np.zeros((count, 16, 16, 3), dtype=np.uint8)
    batch[:, 0, 0, 0] = np.arange(start, start + count)
    return batch


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def run(test) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def test_frames_are_paced_at_the_session_rate() -> None:
    async def test() -> None:
        metrics = GatewayMetrics()
        track = PlayoutTrack(metrics, on_stall=lambda: None)
        track.begin(FPS)
        track.push(frames(6))
        loop = asyncio.get_running_loop()
        began = loop.time()
        received = [await track.recv() for _ in range(6)]
        assert loop.time() - began >= 5 / FPS * 0.95
        assert [frame.to_ndarray(format="rgb24")[0, 0, 0] for frame in received] == list(range(6))
        assert [b.pts - a.pts for a, b in itertools.pairwise(received)] == [VIDEO_CLOCK_RATE / FPS] * 5
        assert value(metrics, "tokentrim_gateway_frames_sent_total") == 6

    run(test)


def test_an_empty_buffer_mid_session_is_a_stall_and_the_clock_restarts() -> None:
    async def test() -> None:
        metrics = GatewayMetrics()
        stalls: list[int] = []
        track = PlayoutTrack(metrics, on_stall=lambda: stalls.append(1))
        track.begin(FPS)
        track.push(frames(1))
        await track.recv()
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.3)  # nearly five frame times with nothing to show
        assert not waiting.done() and stalls == [1]
        track.push(frames(3, start=1))
        await waiting
        # No burst to catch up: the next frame waits its full interval again.
        loop = asyncio.get_running_loop()
        began = loop.time()
        await track.recv()
        assert loop.time() - began >= 0.9 / FPS
        assert value(metrics, "tokentrim_gateway_frames_dropped_total", reason="late") == 0
        # Once the session has delivered its last chunk, running empty is the end, not a stall.
        track.finish()
        await track.recv()
        ending = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.2)
        assert stalls == [1] and value(metrics, "tokentrim_gateway_playout_stalls_total") == 1
        track.stop()
        try:
            await ending
        except Exception as error:  # aiortc's MediaStreamError ends the sender
            assert type(error).__name__ == "MediaStreamError"
        else:
            raise AssertionError("recv() on a stopped track returned")

    run(test)


def test_a_late_sender_skips_to_the_newest_due_frame() -> None:
    async def test() -> None:
        metrics = GatewayMetrics()
        track = PlayoutTrack(metrics, on_stall=lambda: None)
        track.begin(FPS)
        track.push(frames(10))
        await track.recv()
        await asyncio.sleep(4.5 / FPS)  # the encoder took four and a half frame times
        frame = await track.recv()
        dropped = value(metrics, "tokentrim_gateway_frames_dropped_total", reason="late")
        assert dropped >= 3 and frame.to_ndarray(format="rgb24")[0, 0, 0] == 1 + dropped
        assert track.buffered == 10 - 2 - dropped

    run(test)


def test_wait_below_and_discard() -> None:
    async def test() -> None:
        metrics = GatewayMetrics()
        track = PlayoutTrack(metrics, on_stall=lambda: None)
        track.begin(FPS)
        track.push(frames(5))
        waiting = asyncio.ensure_future(track.wait_below(5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await track.recv()
        await asyncio.wait_for(waiting, 1)
        track.discard()
        assert track.buffered == 0
        assert value(metrics, "tokentrim_gateway_frames_dropped_total", reason="discarded") == 4

    run(test)
