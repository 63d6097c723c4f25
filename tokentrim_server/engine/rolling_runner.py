"""Running a Rolling Forcing stream under a cache policy.

Rolling Forcing denoises several blocks jointly, so a block has no "first step" of its own that could be
redone alone. The candidate is therefore each block's final x0, compared with the previous *emitted*
block's final x0 (stage ``final`` only; a ``first_step`` policy is refused). On trigger the engine rewinds
the window that finalised the block (the window's blocks, their steps and noisy latents, the block
counter, and the cache entry that window wrote for the finalised block), removes the chosen positions
from every cached non-sink frame (the recent context: the sink is never touched), and runs the same
window again. Every block of the window starts again from the same keyed noise, so only the pruning
differs.

Why the rewind is exact: a block ``b > 0`` first enters the cache in the window that finalises it, and
that window's denoising call only reads frames newer than any the window's write evicts, so dropping
frames ``>= b`` restores the cache the window saw, minus the pruned tokens. Block 0 is the sink and is
never inspected (there is no previous block to compare it with).

Session hooks are refused: a hook takes part in the first chunk's own denoising steps, and Rolling Forcing
has none. Block 0 is denoised inside the growing first windows, jointly with blocks 1..4 (one model call per
window over all of them), so its steps cannot be adjusted alone without changing the blocks denoised with it;
the first block is emitted only after blocks 1..4 have been partly denoised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from tokentrim_server.engine.base import PolicyRunner
from tokentrim_server.engine.report import ChunkResult
from tokentrim_server.hooks.base import SessionHook
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.pipelines.rolling_forcing import RollingForcingStream
from tokentrim_server.policies.base import CachePolicy, Stage


class RollingForcingRunner(PolicyRunner):
    pipeline_name = "rolling_forcing"

    def __init__(
        self,
        stream: RollingForcingStream,
        policy: CachePolicy,
        seed: int | None = None,
        hooks: Sequence[SessionHook] = (),
    ) -> None:
        super().__init__(stream, policy, seed, hooks)
        self.stream: RollingForcingStream = stream

    def _check_hooks(self) -> None:
        super()._check_hooks()
        if self.hooks:
            names = ", ".join(hook.name for hook in self.hooks)
            raise ValueError(
                f"session hook(s) {names} need the self_forcing pipeline: a hook adjusts the first chunk's own "
                "denoising steps, and Rolling Forcing denoises block 0 jointly with the next blocks inside its "
                "growing first windows (one model call for all of them), so block 0 has no steps of its own"
            )

    def _check_stage(self, stage: Stage | None) -> None:
        super()._check_stage(stage)
        if stage == "first_step":
            raise ValueError(
                f"cache policy {self.policy.name!r} inspects first_step candidates; Rolling Forcing denoises "
                "blocks jointly and can only inspect final blocks (configure the policy with candidate=final)"
            )

    def next_chunk(self) -> ChunkResult:
        log = self._new_log()
        while True:
            log.before = self._sizes()  # the context of the window that finalises the block
            snapshot = self._snapshot()
            chunk = self.stream.step_window()
            if chunk is not None:
                break
        if self.policy.stage is None:
            return self._accept(chunk, log)
        produced = [chunk]

        def produce() -> torch.Tensor:
            if not produced:
                again = self.stream.step_window()
                if again is None:  # the restored window finalises the same block by construction
                    raise RuntimeError(f"re-running the window of block {chunk.index} emitted no block")
                produced.append(again)
            return produced[-1].latents

        def rewind() -> None:
            self._restore(snapshot)
            self.stream.cache.drop_from(chunk.frame_start)
            produced.clear()

        latents = self._select(log, chunk.index, chunk.frame_start, produce, rewind)
        return self._accept(Chunk(chunk.index, chunk.frame_start, latents), log)

    def _snapshot(self) -> tuple[list, int, int]:
        # Blocks are mutated in place (step, noisy) by a window, so keep copies; tensors are replaced, not
        # written into, so sharing them is safe.
        stream = self.stream
        return [replace(block) for block in stream.window], stream.next_block, stream.emitted

    def _restore(self, snapshot: tuple[list, int, int]) -> None:
        window, next_block, emitted = snapshot
        self.stream.window = [replace(block) for block in window]
        self.stream.next_block = next_block
        self.stream.emitted = emitted
