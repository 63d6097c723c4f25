"""Running a pipeline stream under a cache policy and session hooks: one runner for every pipeline.

Per chunk the stream offers a :class:`~tokentrim_server.pipelines.base.ChunkAttempt` at the policy's stage
(the stream says which stages it can offer, and whether hooks can take part). The runner then:

* ``None`` stage (e.g. ``none``): takes the candidate as it is, exactly the plain pipeline; no summaries.
* otherwise: summarises the candidate, lets the policy judge it and, on trigger, rewinds the stream,
  removes the chosen positions from every non-sink cached frame and produces the candidate again, up to the
  policy's ``max_regenerations``; then completes the accepted one and tells the policy.

Self Forcing's ``first_step`` candidate is its first denoising call's x0, so a regeneration costs one model
call; ``final`` candidates re-run the whole chunk (Algorithm 1 literally). Session hooks take part in the
first generated chunk's denoising steps (every attempt of it; prefilled chunks are not generated) through
:class:`~tokentrim_server.engine.hooks.HookSteps`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from tokentrim_server.engine.hooks import HookSteps
from tokentrim_server.engine.report import ChunkReport, ChunkResult
from tokentrim_server.hooks.base import HookReport, SessionHook
from tokentrim_server.pipelines.base import Chunk, StreamBase
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.policies.base import AcceptedChunk, CachePolicy, Candidate, Decision, SessionInfo, Stage
from tokentrim_server.policies.handle import CacheHandle
from tokentrim_server.policies.summary import latent_summary

T = TypeVar("T")


@dataclass
class ChunkLog:
    """Mutable bookkeeping of one chunk while it is being selected."""

    decision: Decision | None = None
    summary: torch.Tensor | None = None
    triggered: bool = False
    regenerations: int = 0
    removed: int = 0
    before: tuple[int, int] = (0, 0)  # committed (tokens, bytes)
    after: tuple[int, int] | None = None  # after the last removal
    decision_seconds: float = 0.0
    policy_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)


class PolicyRunner:
    """Drives one pipeline stream under one policy instance; iterate it for :class:`ChunkResult` s.

    ``seed`` is the session seed a policy may use for its own randomness (default: the stream's
    :class:`SeededNoise` seed, else ``None``). ``hooks`` are session hooks, started here (one may refuse the
    session with a ``ValueError``), taking part in the first generated chunk's denoising and reported on its
    :class:`ChunkReport`; the stream must not have started generating when hooks are given (prefilled chunks
    are fine: the hooks then take part in the first chunk after them).
    """

    def __init__(
        self,
        stream: StreamBase,
        policy: CachePolicy,
        seed: int | None = None,
        hooks: Sequence[SessionHook] = (),
        *,
        prompt: str = "",
        model: str = "",
    ) -> None:
        self.stream = stream
        self.policy = policy
        self.hooks = tuple(hooks)
        self.hook_seconds = [0.0] * len(self.hooks)  # start + every adjust, per hook
        self._hooks_reported = not self.hooks
        self.cache = CacheHandle(stream.cache)
        self._previous: torch.Tensor | None = None  # accepted summary at the policy's stage
        self._closed = False
        if seed is None and isinstance(stream.noise, SeededNoise):
            seed = stream.noise.seed
        self.session = SessionInfo(
            pipeline=stream.pipeline_name,
            seed=seed,
            batch=stream.batch,
            frames_per_block=stream.frames_per_block,
            tokens_per_frame=stream.tokens_per_frame,
            sink_frames=stream.cache.sink_frames,
            latent_shape=tuple(stream.block_shape[2:]),
            patch_size=stream.model.patch_size,
            prompt=prompt,
            model=model,
        )
        self._check_stage(policy.stage)
        self._check_hooks()
        self._hook_steps = HookSteps(stream, self.hooks, self.hook_seconds) if self.hooks else None
        self._start_hooks()
        started = time.perf_counter()
        try:
            policy.start(self.session)
        except BaseException:
            with contextlib.suppress(Exception):
                self._end_hooks()
            raise
        self.start_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[ChunkResult]:
        return self

    def __next__(self) -> ChunkResult:
        if self._closed or self.stream.done:
            raise StopIteration
        return self.next_chunk()

    def __enter__(self) -> PolicyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_chunk(self) -> ChunkResult:
        stream, stage = self.stream, self.policy.stage
        # Hooks take part in the session's first generated chunk only (every attempt of it).
        adjust = self._hook_steps if self._hook_steps is not None and not stream.generating else None
        started = time.perf_counter()  # begin_chunk may run model calls (Rolling Forcing's windows before the last)
        attempt = stream.begin_chunk(stage, adjust)
        log = self._new_log()
        log.started = started
        if stage is None:
            latents = attempt.candidate()
        else:
            latents = self._select(log, attempt.index, attempt.frame_start, attempt.candidate, attempt.rewind)
        return self._accept(attempt.complete(latents), log)

    def close(self) -> None:
        """End the policy's session and free the stream's cache (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.policy.end()
        finally:
            try:
                self._end_hooks()
            finally:
                self.stream.close()

    # ------------------------------------------------------------------ checks
    def _check_stage(self, stage: Stage | None) -> None:
        if stage is None:
            return
        if stage not in self.stream.stages:
            raise ValueError(f"cache policy {self.policy.name!r} asks for an unknown stage {stage!r}")
        refusal = self.stream.stages[stage]
        if refusal is not None:
            raise ValueError(f"cache policy {self.policy.name!r} inspects {stage} candidates; {refusal}")

    def _check_hooks(self) -> None:
        """Refuse hooks the stream cannot honour."""
        if self.hooks and self.stream.hooks_refusal is not None:
            names = ", ".join(hook.name for hook in self.hooks)
            raise ValueError(f"session hook(s) {names} {self.stream.hooks_refusal}")
        for hook in self.hooks:
            if not isinstance(hook, SessionHook):
                raise TypeError(f"session hooks must be SessionHook instances; got {type(hook).__name__}")
        names = [hook.name for hook in self.hooks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"session hook(s) {', '.join(map(repr, repeated))} given more than once")
        if self.hooks and self.stream.generating:
            generated = self.stream.emitted - self.stream.prefilled
            raise ValueError(
                f"session hooks take part in the first generated chunk; this stream has already produced "
                f"{generated} chunk(s) (or has one in flight)"
            )

    # ------------------------------------------------------------------ per chunk
    def _hook_reports(self) -> tuple[HookReport, ...]:
        """Every hook's report, on the first generated chunk's report only (empty afterwards)."""
        if self._hooks_reported:
            return ()
        self._hooks_reported = True
        return tuple(
            HookReport(hook.name, seconds, {str(key): float(value) for key, value in hook.values().items()})
            for hook, seconds in zip(self.hooks, self.hook_seconds, strict=True)
        )

    def _select(
        self,
        log: ChunkLog,
        chunk: int,
        frame_start: int,
        produce: Callable[[], torch.Tensor],
        rewind: Callable[[], None],
    ) -> torch.Tensor:
        """Produce a candidate, let the policy judge it, prune and regenerate on trigger; returns the accepted one.

        ``rewind`` puts the stream back where ``produce`` starts (same noise, the cache as before the attempt
        except for what is pruned afterwards).
        """
        stage = self.policy.stage
        assert stage is not None
        limit = self.policy.max_regenerations
        latents = produce()
        while True:
            summary = self._summarize(log, latents)
            candidate = Candidate(chunk, frame_start, stage, log.regenerations, latents, summary, self._previous)
            decision = self._inspect(log, candidate)
            if not decision.triggered or log.regenerations >= limit:
                break
            log.triggered = True
            rewind()
            self._prune(log, decision.positions)
            log.regenerations += 1
            latents = produce()
        return latents

    def _accept(self, chunk: Chunk, log: ChunkLog) -> ChunkResult:
        """Tell the policy about the committed chunk and build its report."""
        self._previous = log.summary
        accepted = AcceptedChunk(
            chunk.index, chunk.frame_start, chunk.latents, log.summary, log.decision, log.regenerations
        )
        self._timed(log, self.policy.accepted, accepted)
        decision = log.decision or Decision()
        before = log.before
        after = log.after or before
        report = ChunkReport(
            chunk=chunk.index,
            stage=self.policy.stage,
            severity=decision.severity,
            threshold=decision.threshold,
            triggered=log.triggered,
            regenerations=log.regenerations,
            tokens_removed=log.removed,
            cache_tokens_before=before[0],
            cache_tokens_after=after[0],
            cache_bytes_before=before[1],
            cache_bytes_after=after[1],
            decision_seconds=log.decision_seconds,
            policy_seconds=log.policy_seconds,
            chunk_seconds=time.perf_counter() - log.started,
            hooks=self._hook_reports(),
        )
        return ChunkResult(chunk, report)

    # ------------------------------------------------------------------ internals
    def _start_hooks(self) -> None:
        for index, hook in enumerate(self.hooks):
            started = time.perf_counter()
            try:
                hook.start(self.session)
            except BaseException:
                with contextlib.suppress(Exception):  # the refusal is the error to report
                    self._end_hooks(index)  # those already started
                raise
            finally:
                self.hook_seconds[index] += time.perf_counter() - started

    def _end_hooks(self, count: int | None = None) -> None:
        """``end`` the first ``count`` hooks (all by default), each even if an earlier one fails."""
        errors = []
        for hook in self.hooks[:count]:
            try:
                hook.end()
            except Exception as error:  # every hook must be ended; report the first failure
                errors.append(error)
        if errors:
            raise errors[0]

    def _summarize(self, log: ChunkLog, latents: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        log.summary = latent_summary(latents, self.session.patch_size)
        elapsed = time.perf_counter() - started
        log.decision_seconds += elapsed
        log.policy_seconds += elapsed
        return log.summary

    def _inspect(self, log: ChunkLog, candidate: Candidate) -> Decision:
        started = time.perf_counter()
        decision = self.policy.inspect(candidate, self.cache)
        elapsed = time.perf_counter() - started
        log.decision_seconds += elapsed
        log.policy_seconds += elapsed
        if not isinstance(decision, Decision):
            raise TypeError(f"cache policy {self.policy.name!r} returned {type(decision).__name__}, not a Decision")
        log.decision = decision
        return decision

    def _prune(self, log: ChunkLog, positions: torch.Tensor | None) -> None:
        if positions is not None:
            log.removed += self._timed(log, self.cache.remove_positions, positions)
        log.after = self._sizes()

    def _timed(self, log: ChunkLog, function: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            log.policy_seconds += time.perf_counter() - started

    def _new_log(self) -> ChunkLog:
        """Start a chunk's bookkeeping; call where the chunk's context is complete, before its first model call."""
        return ChunkLog(before=self._sizes())

    def _sizes(self) -> tuple[int, int]:
        stats = self.cache.stats()
        return stats.tokens, stats.bytes


def open_runner(
    stream: StreamBase,
    policy: CachePolicy,
    seed: int | None = None,
    hooks: Sequence[SessionHook] = (),
    *,
    prompt: str = "",
    model: str = "",
) -> PolicyRunner:
    """Run ``stream`` under ``policy``; ``hooks`` take part in the first chunk (where the pipeline allows).
    ``prompt`` and ``model`` are what plugins are told of the session (:class:`SessionInfo`)."""
    return PolicyRunner(stream, policy, seed, hooks, prompt=prompt, model=model)
