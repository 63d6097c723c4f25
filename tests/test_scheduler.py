"""The scheduler (issue #18): least playout slack first, within a bound on each session's device time; chunk
steps of compatible sessions batched, and renderings of same-size chunks decoded together.

Jobs advance a fake clock by their cost, so the schedule is exact and independent of the machine's speed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_batching import CHUNKS, TOLERANCE, alone, plan
from test_device_worker import FakeClock

from tokentrim_server.engine.batching import Batched
from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.engine.playout import PlayoutClock
from tokentrim_server.engine.worker import DeviceWorker
from tokentrim_server.hooks import DenoisingStep, SessionHook


class Streams:
    """Owners that each keep one job queued, as served sessions do; each job costs ``costs[owner]`` device
    seconds and adds ``seconds_of_video[owner]`` to its owner's buffer (its slack)."""

    def __init__(self, costs: dict[str, float], fairness_seconds: float, slack: dict[str, float]) -> None:
        self.clock = FakeClock()
        self.worker = DeviceWorker("test-scheduler", clock=self.clock, fairness_seconds=fairness_seconds)
        self.costs = costs
        self.slack = dict(slack)
        self.order: list[str] = []
        self.gate = threading.Event()

    def job(self, owner: str, left: int, done: threading.Event):
        def run() -> None:
            self.gate.wait()
            self.order.append(owner)
            self.clock.now += self.costs[owner]
            if left > 1:
                self.worker.submit(self.job(owner, left - 1, done), owner=owner, slack=lambda: self.slack[owner])
            else:
                done.set()

        return run

    def run(self, jobs: int) -> list[str]:
        done = threading.Event()
        for owner in self.costs:
            self.worker.submit(self.job(owner, jobs, done), owner=owner, slack=lambda owner=owner: self.slack[owner])
        self.gate.set()
        assert done.wait(10)  # the first owner to finish all its jobs
        self.worker.shutdown()
        return self.order


def test_the_stream_with_the_least_slack_goes_first():
    # Equal costs, within the fairness bound: the least slack first, every time.
    order = Streams({"ahead": 1.0, "behind": 1.0, "even": 1.0}, 10.0, {"ahead": 5.0, "behind": -1.0, "even": 0.0}).run(
        jobs=3
    )
    assert order[:3] == ["behind"] * 3
    # With no bound (plain fair sharing) slack only breaks ties: they take turns.
    order = Streams({"a": 1.0, "b": 1.0}, 0.0, {"a": 5.0, "b": -1.0}).run(jobs=3)
    assert order[:4] == ["b", "a", "b", "a"]


def test_an_expensive_session_with_the_least_slack_cannot_starve_a_cheap_one():
    # "heavy" is always behind (least slack) and its chunks cost 10x; "light" is ahead. Least slack first alone
    # would run heavy only; the fairness bound (2 device seconds) lets light have its share of device time.
    costs, slack = {"heavy": 1.0, "light": 0.1}, {"heavy": -10.0, "light": 10.0}
    order = Streams(costs, 2.0, slack).run(jobs=40)
    contended = order[: len(order) - order[::-1].index("light")]  # while light still had work
    heavy, light = 0.0, 0.0
    for owner in contended:  # at every point light's device time trails heavy's by at most the bound plus one job
        heavy += costs[owner] * (owner == "heavy")
        light += costs[owner] * (owner == "light")
        assert heavy - light <= 2.0 + 1.0 + 1e-9
    assert contended.count("light") == 40 and contended.count("heavy") >= 3
    # The same without the bound: light starves while heavy has work.
    unbounded = Streams(costs, 1000.0, slack).run(jobs=40)
    assert unbounded[:40] == ["heavy"] * 40


def test_a_session_waiting_for_its_first_chunk_is_served_before_buffered_ones():
    clock = FakeClock()
    waiting = PlayoutClock(16.0, 0.5, clock)
    buffered = PlayoutClock(16.0, 0.5, clock)
    buffered.deliver(16)  # one second of video
    buffered.produced(16)
    clock.now = 0.2
    assert waiting.slack() == pytest.approx(-0.2)
    assert buffered.slack() == pytest.approx(0.0 + 0.5 + 1.0 - 0.2)


async def _run_together(worker: DeviceWorker, jobs: list[Batched]) -> list:
    """Queue every job (owner: its index) before the worker picks, then their (result, share) pairs.

    The gate holds the worker until all are queued. It is urgent (tagged at the current virtual time), so it
    runs before them even when an earlier call charged its owner more device time than theirs: a plain gate
    could then lose the pick to the first job queued, and the worker take that job before the next arrived.
    """
    gate = threading.Event()
    worker.submit(gate.wait, owner="gate", urgent=True)
    running = [asyncio.ensure_future(worker.run_batched(job, owner=index)) for index, job in enumerate(jobs)]
    while worker.queued_batchable() < len(jobs):
        await asyncio.sleep(0.01)
    gate.set()
    return await asyncio.gather(*running)


def test_the_worker_batches_compatible_steps_and_charges_each_session(tiny_bundle):
    worker = DeviceWorker("test-scheduler", max_batch=3)
    plans = [plan(1), plan(2), plan(3, size=48), plan(4)]
    sessions = [GenerationSession(tiny_bundle, session_plan) for session_plan in plans]
    try:
        chunks = [[] for _ in sessions]
        for _ in range(CHUNKS):
            steps = asyncio.run(_run_together(worker, [session.step_job() for session in sessions]))
            assert [share.batch_size for _, share in steps] == [3, 3, 1, 3]
            assert all(share.seconds > 0 for _, share in steps)
            for produced, (step, _) in zip(chunks, steps, strict=True):
                produced.append(step.result.chunk.latents)
        for session_plan, produced in zip(plans, chunks, strict=True):
            for own, chunk in zip(alone(tiny_bundle, session_plan), produced, strict=True):
                torch.testing.assert_close(chunk, own, **TOLERANCE)
    finally:
        worker.shutdown()
        for session in sessions:
            session.close()


def test_the_render_worker_decodes_same_size_chunks_together(tiny_bundle):
    worker = DeviceWorker("test-render", max_batch=4)
    plans = [replace(plan(seed), decode=True) for seed in (1, 2)]
    sessions = [GenerationSession(tiny_bundle, session_plan) for session_plan in plans]
    references = [GenerationSession(tiny_bundle, session_plan) for session_plan in plans]
    try:
        for _ in range(2):
            jobs = [session.render_job(GenerationSession.decode, session.step()) for session in sessions]
            rendered = asyncio.run(_run_together(worker, jobs))
            assert [share.batch_size for _, share in rendered] == [2, 2]
            for reference, (frames, _) in zip(references, rendered, strict=True):
                alone_frames = reference.decode(reference.step())
                assert np.abs(frames.astype(int) - alone_frames.astype(int)).max() <= 1  # uint8, rounding at most
    finally:
        worker.shutdown()
        for session in sessions + references:
            session.close()


class Nudge(SessionHook):
    """Scales the first step's noisy latent of the session's first chunk (a hook that changes the video)."""

    name = "nudge"

    def adjust(self, step: DenoisingStep) -> torch.Tensor | None:
        return step.noisy * 1.1 if step.step == 0 else None


def test_a_hooked_first_chunk_is_stepped_alone_then_the_session_batches(tiny_bundle):
    worker = DeviceWorker("test-scheduler", max_batch=2)
    hooked = GenerationSession(tiny_bundle, replace(plan(6), hooks=(Nudge(),)))
    sessions = [hooked, GenerationSession(tiny_bundle, plan(7))]
    try:
        chunks = []
        for index in range(CHUNKS):
            steps = asyncio.run(_run_together(worker, [session.step_job() for session in sessions]))
            assert [share.batch_size for _, share in steps] == ([1, 1] if index == 0 else [2, 2])
            chunks.append(steps[0][0].result.chunk.latents)
        for own, chunk in zip(alone(tiny_bundle, replace(plan(6), hooks=(Nudge(),))), chunks, strict=True):
            torch.testing.assert_close(chunk, own, **TOLERANCE)
        assert not torch.allclose(chunks[0], alone(tiny_bundle, plan(6))[0])  # the hook took part
    finally:
        worker.shutdown()
        for session in sessions:
            session.close()
