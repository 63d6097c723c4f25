"""Running a Self Forcing stream under a cache policy, and choosing the runner for a stream.

Per block: ``prepare_block`` (local-window eviction), then by the policy's stage:

* ``first_step``: the candidate is the x0 prediction of the block's first denoising call. On trigger the
  chosen positions leave every non-sink cached frame, the pending K/V is discarded and ``first_step`` runs
  again from the block's keyed initial noise, so a regeneration costs one model call, not a block.
* ``final``: the candidate is the fully denoised block (Algorithm 1 literally); a regeneration re-runs
  every denoising step.
* ``None`` (e.g. ``none``): exactly the plain pipeline, no summaries are computed.

Then ``finish`` (first_step stage), ``commit`` and the policy's ``accepted``. Session hooks take part in the
first block's steps, through :class:`HookedSelfForcing` standing in for the stream's ``first_step``/``finish``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokentrim_server.engine.base import PolicyRunner
from tokentrim_server.engine.hooked import HookedSelfForcing
from tokentrim_server.engine.report import ChunkResult
from tokentrim_server.engine.rolling_runner import RollingForcingRunner
from tokentrim_server.hooks.base import SessionHook
from tokentrim_server.pipelines.base import StreamBase
from tokentrim_server.pipelines.rolling_forcing import RollingForcingStream
from tokentrim_server.pipelines.self_forcing import SelfForcingStream
from tokentrim_server.policies.base import CachePolicy


class SelfForcingRunner(PolicyRunner):
    pipeline_name = "self_forcing"

    def __init__(
        self,
        stream: SelfForcingStream,
        policy: CachePolicy,
        seed: int | None = None,
        hooks: Sequence[SessionHook] = (),
    ) -> None:
        super().__init__(stream, policy, seed, hooks)
        self.stream: SelfForcingStream = stream
        self._hooked = HookedSelfForcing(stream, self.hooks, self.hook_seconds) if self.hooks else None

    def next_chunk(self) -> ChunkResult:
        stream = self.stream
        stream.prepare_block()
        log = self._new_log()
        block, frame_start = stream.block, stream.frame_start
        # The hooks take part in the session's first block only (every attempt of it).
        steps = self._hooked if self._hooked is not None and block == 0 else stream
        first_step, finish = steps.first_step, steps.finish
        rewind = stream.cache.discard_pending
        stage = self.policy.stage
        if stage == "first_step":
            final = finish(self._select(log, block, frame_start, first_step, rewind))
        elif stage == "final":
            final = self._select(log, block, frame_start, lambda: finish(first_step()), rewind)
        else:
            final = finish(first_step())
        return self._accept(stream.commit(final), log)


def open_runner(
    stream: StreamBase, policy: CachePolicy, seed: int | None = None, hooks: Sequence[SessionHook] = ()
) -> PolicyRunner:
    """The runner for ``stream``'s pipeline; ``hooks`` take part in the first chunk (Self Forcing only)."""
    if isinstance(stream, SelfForcingStream):
        return SelfForcingRunner(stream, policy, seed, hooks)
    if isinstance(stream, RollingForcingStream):
        return RollingForcingRunner(stream, policy, seed, hooks)
    raise TypeError(f"no policy runner for {type(stream).__name__}")
