"""``tokentrim-client stream``: one session to an MP4 file, a report log and a live progress line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_client.aio import AsyncClient
from tokentrim_client.cli.exit_codes import ExitCode
from tokentrim_client.cli.progress import Progress, progress_line
from tokentrim_client.cli.reports import ReportLog, chunk_record
from tokentrim_client.decoding import ReceivedChunk
from tokentrim_client.errors import ClientError
from tokentrim_client.messages import SessionOptions
from tokentrim_client.mp4 import Mp4Writer
from tokentrim_client.session import AsyncSession


@dataclass
class StreamPlan:
    """What ``stream`` was asked to do, once the flags are checked."""

    prompt: str
    options: SessionOptions
    switches: dict[int, str] = field(default_factory=dict)  # CHUNK -> prompt
    out: str | None = None
    fps: float | None = None
    reports: str | None = None


class Interrupts:
    """Ctrl-C while streaming: the first asks the server to stop after the chunk in progress (what arrived is
    kept), the second drops the stream at once. Before the session starts there is nothing to keep, so the
    first one cancels the whole command."""

    def __init__(self, session: AsyncSession, progress: Progress) -> None:
        self.count = 0
        self._session = session
        self._progress = progress
        self._task = asyncio.current_task()
        self._pending: set[asyncio.Task[None]] = set()  # strong references, or the loop may drop the tasks

    def __call__(self) -> None:
        self.count += 1
        if self._session.started is None:
            if self._task is not None:
                self._task.cancel()
        elif self.count == 1:
            self._progress.message("stopping after the chunk in progress (Ctrl-C again to quit at once)")
            self._spawn(self._session.stop())
        else:
            self._progress.message("quitting; keeping what arrived")
            self._spawn(self._session.close())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class Outputs:
    """The MP4 file and the report log, both created with the first chunk: the MP4 then knows the session's
    rate, and a session that delivers nothing leaves no files behind."""

    def __init__(self, plan: StreamPlan) -> None:
        self._plan = plan
        self.video: Mp4Writer | None = None
        self.reports: ReportLog | None = None

    def add(self, chunk: ReceivedChunk, started: pb.SessionStarted, received_seconds: float) -> None:
        if self._plan.reports is not None:
            self.reports = self.reports or ReportLog(self._plan.reports)
            self.reports.write(chunk_record(chunk, received_seconds))
        if self._plan.out is not None and chunk.frames is not None:
            self.video = self.video or Mp4Writer(self._plan.out, self._plan.fps or started.frames_per_second)
            self.video.write(chunk.frames)

    def close(self) -> None:
        try:
            if self.video is not None:
                self.video.close()
        finally:
            if self.reports is not None:
                self.reports.close()


async def run_stream(client: AsyncClient, plan: StreamPlan, progress: Progress) -> ExitCode:
    session = client.session(plan.prompt, **vars(plan.options))
    interrupts = Interrupts(session, progress)
    outputs = Outputs(plan)
    try:
        with _on_sigint(interrupts):
            async with session:
                assert session.started is not None
                progress.message(_started_line(session.started))
                await _receive(session, plan, outputs, progress)
        code = ExitCode.INTERRUPTED if interrupts.count else ExitCode.OK
    except asyncio.CancelledError:
        progress.error("interrupted before the session started")
        return ExitCode.INTERRUPTED
    except ClientError as error:
        progress.error(f"error: {error}")
        code = ExitCode.FAILED
    finally:
        outputs.close()  # finalises the MP4 whatever happened, so what arrived stays playable
    if session.started is not None:
        progress.message(_summary(session, outputs))
    return code


@contextlib.contextmanager
def _on_sigint(handler: Callable[[], None]) -> Iterator[None]:
    """Route SIGINT to ``handler`` while streaming. Where the loop cannot take signals (not the main thread,
    no Unix signals) Ctrl-C stays a KeyboardInterrupt, which still closes the session and the files."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _receive(session: AsyncSession, plan: StreamPlan, outputs: Outputs, progress: Progress) -> None:
    assert session.started is not None
    pending = dict(plan.switches)
    async for chunk in session:
        # A switch for chunk N goes out as soon as chunk N-1 is here: before this chunk's credit is returned,
        # so with --credits 1 chunk N is the first one generated under the new prompt.
        for target in sorted(k for k in pending if k <= chunk.index + 1 and not session.finished):
            prompt = pending.pop(target)
            await session.change_prompt(prompt)
            progress.message(f"prompt change for chunk {target} sent: {prompt!r}")
        # Encoding on the loop rather than in a thread: an interrupt must never close the file mid-write.
        outputs.add(chunk, session.started, session.stats.elapsed)
        progress.update(progress_line(session.stats, session.started.chunks))


def _summary(session: AsyncSession, outputs: Outputs) -> str:
    stats, ended = session.stats, session.ended
    reason = pb.EndReason.Name(ended.reason).removeprefix("END_REASON_").lower() if ended is not None else "dropped"
    first = "-" if stats.first_chunk_seconds is None else f"{stats.first_chunk_seconds:.2f} s"
    wrote = f"; wrote {outputs.video.frames_written} frames to {outputs.video.path}" if outputs.video else ""
    return (
        f"{reason}: {stats.chunks} chunks, {stats.frames} frames in {stats.elapsed:.1f} s "
        f"({stats.frames_per_second:.1f} fps); first frame after {first}; {stats.prune_events} prune events{wrote}"
    )


def _started_line(started: pb.SessionStarted) -> str:
    length = f"{started.chunks} chunks" if started.chunks else "unbounded"
    return (
        f"session {started.session_id}: {started.model} / {started.pipeline}, {started.width}x{started.height} "
        f"at {started.frames_per_second:g} fps, {length}, seed {started.seed}, policy {started.cache_policy or '-'}"
    )
