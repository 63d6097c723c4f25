"""Stepping several sessions together, their model calls batched: one chunk each, one model call per round.

Each session's :meth:`GenerationSession.step` runs as it always does (prompt switch, cache policy, rewinds
and regenerations, hooks' steps), on a helper thread of its own, with its stream's model calls routed
through a :class:`CallGate`. The gate lets the calling thread wait, and the device worker's thread runs the
model: whenever every session of the group is either waiting at a model call or done with its chunk, the
waiting calls are grouped by :attr:`ModelCall.batch_key` (input shape, dtype, device) and each group runs as
one :meth:`CausalWanTransformer.forward_many`, in the sessions' order. So sessions in step (same pipeline,
frame size and denoising step) share every call of their chunk; a session that needs an extra call (a
regeneration after a prune, a prompt switch's re-encoding) makes it alone or with whoever waits at the same
time, and nothing a session computes depends on what it was batched with beyond the rounding of batched
matrix products.

Session hooks' differentiable calls never pass the gate (the engine steps a session whose first chunk is
hooked alone: see :attr:`GenerationSession.batchable`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from tokentrim_server.models.causal_wan import CausalWanTransformer, ModelCall

if TYPE_CHECKING:
    from tokentrim_server.engine.generation import ChunkStep, GenerationSession


class CallGate:
    """Gathers the model calls of ``participants`` threads and runs them batched on the serving thread."""

    def __init__(self, model: CausalWanTransformer, participants: int) -> None:
        self.model = model
        self._running = participants  # participants computing between model calls
        self._waiting: dict[int, tuple[ModelCall, Future[torch.Tensor]]] = {}
        self._condition = threading.Condition()
        self.batch_sizes: list[int] = []  # sessions in each model call run, for the metrics

    def caller(self, participant: int) -> Callable[[ModelCall], torch.Tensor]:
        """The ``call_model`` of participant number ``participant`` (they are numbered from 0)."""

        def call(model_call: ModelCall) -> torch.Tensor:
            result: Future[torch.Tensor] = Future()
            with self._condition:
                self._waiting[participant] = (model_call, result)
                self._running -= 1
                self._condition.notify_all()
            return result.result()

        return call

    def finished(self) -> None:
        """A participant is done with its chunk (or failed): it will call nothing more."""
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def serve(self) -> None:
        """Run the participants' calls until every one of them is done (on the device worker's thread)."""
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._running == 0)
                if not self._waiting:
                    return
                waiting, self._waiting = self._waiting, {}
                self._running = len(waiting)  # they resume computing once their results are set
            groups: dict[tuple, list[tuple[ModelCall, Future[torch.Tensor]]]] = {}
            for participant in sorted(waiting):
                model_call, result = waiting[participant]
                groups.setdefault(model_call.batch_key, []).append((model_call, result))
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[tuple[ModelCall, Future[torch.Tensor]]]) -> None:
        self.batch_sizes.append(len(group))
        try:
            with torch.no_grad():
                flows = self.model.forward_many([model_call for model_call, _ in group])
        except Exception as error:  # tell every waiting session; each fails its own chunk
            for _, result in group:
                result.set_exception(error)
            return
        for (_, result), flow in zip(group, flows, strict=True):
            result.set_result(flow)


class BatchStepper:
    """Steps several sessions' next chunks together, their model calls batched (threads: one per session)."""

    def __init__(self, max_sessions: int) -> None:
        self._threads = ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="session-step")

    def step(self, sessions: Sequence[GenerationSession]) -> tuple[list[Future[ChunkStep]], list[int]]:
        """Each session's next chunk (a future holding its :class:`ChunkStep` or its error), and the sizes of the
        batched model calls that made them; on the calling thread, which runs the model."""
        gate = CallGate(sessions[0].bundle.transformer, len(sessions))
        steps = [self._threads.submit(_step_through, session, gate, number) for number, session in enumerate(sessions)]
        gate.serve()
        for step in steps:
            step.exception()  # wait for each to return (it has, or is about to: it called its last model call)
        return steps, gate.batch_sizes

    def shutdown(self) -> None:
        self._threads.shutdown()


def _step_through(session: GenerationSession, gate: CallGate, participant: int) -> ChunkStep:
    stream = session.runner.stream
    stream.call_model = gate.caller(participant)
    try:
        return session.step()
    finally:
        stream.call_model = stream.call_alone
        gate.finished()
