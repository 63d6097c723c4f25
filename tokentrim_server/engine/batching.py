"""Running several sessions' jobs together, their device calls batched: one batched call per round.

A batchable job (:class:`Batched`) is one session's work, a chunk step or a chunk's rendering, written as it
runs alone, except that its device calls of one kind (model calls, VAE decodes) go through a function it is
given. :class:`BatchRunner` runs the jobs of a group each on a helper thread of its own, with that function
routed through a :class:`CallGate`: the calling thread waits, and the worker's thread (the caller of
:meth:`BatchRunner.run`) does the device work. Whenever every job of the group is either waiting at a call or
done, the waiting calls are grouped by their ``batch_key`` and each group runs as one batched call
(``run_many``), in the jobs' order. So sessions in step (same pipeline, frame size and denoising step) share
every model call of their chunks, and the decode of same-size chunks, while each session's own work between
calls (its cache policy, rewinds and regenerations, a prompt switch's re-encoding, noise, JPEG encoding)
runs as it does alone. A call that only one session makes at that moment runs alone.

A session's state never depends on what it ran with beyond the rounding of batched arithmetic: each call
reads and writes only its own session's state (KV cache, decoder context).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="KeyedCall")
R = TypeVar("R")


class KeyedCall(Protocol):
    @property
    def batch_key(self) -> Hashable:
        """Calls with equal keys can run as one batched call."""
        ...


RunMany = Callable[[list[Any]], list[Any]]
"""Runs calls of one ``batch_key`` as one batched call; returns each call's result, in order."""


@dataclass(frozen=True)
class Batched(Generic[T]):
    """A job that may run batched with other sessions' jobs of the same ``key`` (``None``: always alone).

    ``task(call)`` does the job, passing each of its batchable device calls to ``call``; ``run_many`` runs
    such calls batched; ``cost`` is the job's compute cost, by which a batch's device time is shared out.
    """

    key: Hashable | None
    cost: float
    task: Callable[[Callable[[Any], Any]], T]
    run_many: RunMany

    def run_alone(self) -> T:
        return self.task(lambda call: self.run_many([call])[0])


class CallGate(Generic[C, R]):
    """Gathers the calls of ``participants`` threads and runs them batched on the serving thread."""

    def __init__(self, run_many: Callable[[list[C]], list[R]], participants: int) -> None:
        self.run_many = run_many
        self._running = participants  # participants working between calls
        self._waiting: dict[int, tuple[C, Future[R]]] = {}
        self._condition = threading.Condition()
        self.batch_sizes: list[int] = []  # calls in each batched call run

    def caller(self, participant: int) -> Callable[[C], R]:
        """The call function of participant number ``participant`` (they are numbered from 0)."""

        def call(batched_call: C) -> R:
            result: Future[R] = Future()
            with self._condition:
                self._waiting[participant] = (batched_call, result)
                self._running -= 1
                self._condition.notify_all()
            return result.result()

        return call

    def finished(self) -> None:
        """A participant is done with its job (or failed): it will call nothing more."""
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def serve(self) -> None:
        """Run the participants' calls until every one of them is done."""
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._running == 0)
                if not self._waiting:
                    return
                waiting, self._waiting = self._waiting, {}
                self._running = len(waiting)  # they work on once their results are set
            groups: dict[Hashable, list[tuple[C, Future[R]]]] = {}
            for participant in sorted(waiting):
                batched_call, result = waiting[participant]
                groups.setdefault(batched_call.batch_key, []).append((batched_call, result))
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[tuple[C, Future[R]]]) -> None:
        self.batch_sizes.append(len(group))
        try:
            results = self.run_many([batched_call for batched_call, _ in group])
        except Exception as error:  # tell every waiting participant; each fails its own job
            for _, result in group:
                result.set_exception(error)
            return
        for (_, result), value in zip(group, results, strict=True):
            result.set_result(value)


class BatchRunner:
    """Runs groups of :class:`Batched` jobs together (threads: one per job of a group)."""

    def __init__(self, max_jobs: int) -> None:
        self._threads = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="batched-job")

    def run(self, jobs: Sequence[Batched[T]]) -> tuple[list[Future[T]], list[int]]:
        """Each job's outcome (a future holding its result or its error) and the sizes of the batched calls that
        made them; the calls run on the calling thread. Every job of a group must share one ``run_many``."""
        gate: CallGate[Any, Any] = CallGate(jobs[0].run_many, len(jobs))
        outcomes = [self._threads.submit(_take_part, job, gate, number) for number, job in enumerate(jobs)]
        gate.serve()
        for outcome in outcomes:
            outcome.exception()  # wait for each to return (it has, or is about to: it made its last call)
        return outcomes, gate.batch_sizes

    def shutdown(self) -> None:
        self._threads.shutdown()


def _take_part(job: Batched[T], gate: CallGate[Any, Any], participant: int) -> T:
    try:
        return job.task(gate.caller(participant))
    finally:
        gate.finished()
