"""The device worker shares device time fairly between sessions, whatever their chunks cost (issue #16, item 2).

Jobs advance a fake clock by their cost, so the schedule is exact and independent of the machine's speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tokentrim_server.engine.worker import DeviceWorker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scenario:
    """Owners that each keep one job queued at a time, as served sessions do (the next after the last returned)."""

    def __init__(self, costs: dict[str, float], jobs_each: int) -> None:
        self.clock = FakeClock()
        self.worker = DeviceWorker("test-worker", clock=self.clock)
        self.costs = costs
        self.left = dict.fromkeys(costs, jobs_each)
        self.order: list[str] = []
        self.done = threading.Event()
        self.gate = threading.Event()  # holds the first job until every owner has queued its own

    def job(self, owner: str) -> Callable[[], None]:
        def run() -> None:
            self.gate.wait()
            self.order.append(owner)
            self.clock.now += self.costs[owner]
            self.left[owner] -= 1
            if self.left[owner]:
                self.worker.submit(self.job(owner), owner=owner)  # queued from the worker: before it picks again
            elif not any(self.left.values()):
                self.done.set()

        return run

    def run(self) -> list[str]:
        for owner in self.costs:
            self.worker.submit(self.job(owner), owner=owner)
        self.gate.set()
        assert self.done.wait(10)
        self.worker.shutdown()
        return self.order


def test_an_expensive_session_gets_a_fair_share_of_time_not_of_chunks():
    # "slow" chunks cost 10x "fast" ones (e.g. many denoising steps against few). First in first out would
    # alternate them, so "fast" would wait one slow chunk per chunk of its own.
    order = Scenario({"slow": 10.0, "fast": 1.0}, jobs_each=30).run()
    first_slow = order.index("slow")
    second_slow = order.index("slow", first_slow + 1)
    assert order[first_slow + 1 : second_slow] == ["fast"] * 10
    # Over the contended period each session had about the same device time.
    contended = order[: order.index("slow", second_slow + 1)]
    slow_time, fast_time = 10.0 * contended.count("slow"), 1.0 * contended.count("fast")
    assert abs(slow_time - fast_time) <= 10.0


def test_equal_sessions_take_turns():
    order = Scenario({"a": 1.0, "b": 1.0, "c": 1.0}, jobs_each=4).run()
    assert order == ["a", "b", "c"] * 4


def recorder(order: list[str], clock: FakeClock) -> Callable[[str, float], Callable[[], None]]:
    """``job(name, cost)``: a job that records ``name`` in ``order`` and advances ``clock`` by ``cost``."""

    def job(name: str, cost: float) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            clock.now += cost

        return run

    return job


def test_an_idle_owner_cannot_bank_its_share():
    clock = FakeClock()
    worker = DeviceWorker("test-worker", clock=clock)
    order: list[str] = []
    job = recorder(order, clock)
    # "busy" runs 20 units alone; "late" arrives after and must not then get 20 units in a row.
    for _ in range(20):
        worker.submit(job("busy", 1.0), owner="busy").result()
    gate = threading.Event()
    worker.submit(gate.wait, owner="gate")
    late = [worker.submit(job("late", 1.0), owner="late") for _ in range(5)]
    busy = [worker.submit(job("busy", 1.0), owner="busy") for _ in range(5)]
    gate.set()
    for future in late + busy:
        future.result()
    worker.shutdown()
    tail = "".join(owner[0] for owner in order[20:])  # b: busy, l: late
    assert sorted(tail) == ["b"] * 5 + ["l"] * 5
    assert "lll" not in tail, tail  # they take turns (start tags are one job apart at most)


def test_one_owners_jobs_run_in_order_and_errors_reach_the_caller():
    worker = DeviceWorker("test-worker")
    seen: list[int] = []
    futures = [worker.submit(seen.append, index, owner="session") for index in range(50)]

    def fail() -> None:
        raise RuntimeError("job failed")

    failing = worker.submit(fail, owner="session")
    after = worker.submit(lambda: "still serving", owner="other")
    for future in futures:
        future.result()
    with pytest.raises(RuntimeError, match="job failed"):
        failing.result()
    assert after.result() == "still serving" and seen == list(range(50))
    worker.forget("session")
    worker.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(seen.append, 0)


def test_clean_up_jobs_do_not_wait_for_the_fair_share():
    # "spent" has used far more device time than "busy"; its clean-up must still run before busy's next jobs,
    # so a finished session frees its slot and memory at once.
    clock = FakeClock()
    worker = DeviceWorker("test-worker", clock=clock)
    order: list[str] = []
    job = recorder(order, clock)
    worker.submit(job("spent", 100.0), owner="spent").result()
    gate = threading.Event()
    worker.submit(gate.wait, owner="gate")
    busy = [worker.submit(job("busy", 1.0), owner="busy") for _ in range(3)]
    release = worker.submit(job("release", 0.0), owner="spent", urgent=True)
    gate.set()
    for future in [*busy, release]:
        future.result()
    worker.shutdown()
    assert order == ["spent", "busy", "release", "busy", "busy"]  # without urgent: release last
