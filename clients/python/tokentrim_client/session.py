"""One streaming session over the Generate RPC: opening with retries, credits, prompt changes, stop, and resuming
a session whose connection dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_client.decoding import ReceivedChunk, decode_chunk
from tokentrim_client.errors import ClientError, protocol_error
from tokentrim_client.messages import change_prompt_request, grant_request, resume_request, stop_request
from tokentrim_client.retry import RetryPolicy, call_with_retries
from tokentrim_client.transport import StreamCall

GenerateCall = StreamCall[pb.GenerateRequest, pb.GenerateResponse]
CallFactory = Callable[..., GenerateCall]  # (extra_metadata=()) -> a new Generate call
# A started session whose call fails with this is resumed: the connection (or the server's process), not the
# session, failed. Anything else is the session's own end.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
# Metadata a resume carries, so that a proxy can route it to the replica holding the session (docs/deploy.md).
SESSION_HEADER = "x-tokentrim-session"
CLOSE_GRACE_SECONDS = 0.5  # how long leaving a session waits for the server's `ended` before cancelling

log = logging.getLogger(__name__)


@dataclass
class SessionStats:
    """Running figures of a session, updated as chunks are pulled (the CLI's progress line reads them)."""

    chunks: int = 0
    frames: int = 0
    prune_events: int = 0
    tokens_removed: int = 0
    resumes: int = 0  # dropped connections the session survived
    opened_at: float = field(default_factory=time.monotonic)
    first_chunk_seconds: float | None = None
    last_chunk_at: float | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.opened_at

    @property
    def frames_per_second(self) -> float:
        """Frames received per second of session time so far (time to first frame included)."""
        if self.last_chunk_at is None:
            return 0.0
        return self.frames / max(self.last_chunk_at - self.opened_at, 1e-9)

    def add(self, chunk: ReceivedChunk) -> None:
        now = time.monotonic()
        if self.first_chunk_seconds is None:
            self.first_chunk_seconds = now - self.opened_at
        self.last_chunk_at = now
        self.chunks += 1
        self.frames += chunk.frame_count
        self.prune_events += int(bool(chunk.report.get("triggered")))
        self.tokens_removed += int(chunk.report.get("tokens_removed") or 0)


class AsyncSession:
    """A session of the Generate RPC; use it as ``async with`` and iterate it for chunks.

    Entering opens the stream and waits for ``started`` (retried on the policy's codes until then). Each chunk
    pulled after the first returns one credit for the chunk before it, so the server never runs more than the
    initial credit ahead of what the caller has finished with. Leaving before ``ended`` cancels the RPC.

    When a started session's call fails because the connection did (``UNAVAILABLE`` and the like), the session
    is resumed with its token: a new call asks for the chunks after the last one pulled, so the caller sees no
    gap and no duplicate (each drop is retried with the policy's backoff; ``stats.resumes`` counts them). A
    server that no longer holds the session answers ``NOT_FOUND``, which is raised.
    """

    def __init__(self, new_call: CallFactory, start: pb.GenerateRequest, retries: RetryPolicy) -> None:
        self._new_call = new_call
        self._start = start
        self._retries = retries
        self._call: GenerateCall | None = None
        self._last_index: int | None = None  # of the last chunk pulled, for a resume
        self._owed_credit = False
        self._stop_sent = False
        self._finished = False
        self.started: pb.SessionStarted | None = None
        self.ended: pb.SessionEnded | None = None
        self.stats = SessionStats()

    @property
    def finished(self) -> bool:
        """True once the stream is over for the caller: ``ended`` was pulled, an error raised, or it was closed."""
        return self._finished

    async def __aenter__(self) -> AsyncSession:
        if self._call is not None:
            raise RuntimeError("a session can be entered only once")
        self.stats = SessionStats()  # time to first frame counts from here, retries included
        self._call, self.started = await call_with_retries(
            lambda: self._open(self._start), self._retries, "opening the session"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the session: ask the server to stop it, then cancel the RPC unless it is over, so that the server
        frees the session at once instead of holding it for a resume; a later ``next_chunk`` returns None."""
        self._finished = True
        call = self._call
        if call is None or call.done():
            return
        if not self._stop_sent:
            self._stop_sent = True
            call.write(stop_request())
            # Let the stop reach the server before the cancel can overtake it: it answers with `ended` after the
            # chunk in progress, usually well within the grace; either way the stop has arrived by then.
            with contextlib.suppress(TimeoutError, grpc.RpcError):
                await asyncio.wait_for(self._discard_until_end(call), CLOSE_GRACE_SECONDS)
        call.cancel()

    @staticmethod
    async def _discard_until_end(call: GenerateCall) -> None:
        while await call.read() is not None:
            pass

    def __aiter__(self) -> AsyncIterator[ReceivedChunk]:
        return self

    async def __anext__(self) -> ReceivedChunk:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def next_chunk(self) -> ReceivedChunk | None:
        """The next chunk, or None once the session has ended."""
        call = self._require_call()
        if self._finished:
            return None
        if self._owed_credit:
            self._owed_credit = False
            call.write(grant_request(1))
        message = await self._read(call)
        kind = None if message is None else message.WhichOneof("response")
        if kind == "chunk":
            assert message is not None and self.started is not None
            chunk = await asyncio.to_thread(decode_chunk, message.chunk, self.started)  # JPEG decode is slow
            self._last_index = message.chunk.index
            self._owed_credit = True
            self.stats.add(chunk)
            return chunk
        if self._finished:  # closed while we waited: the cancellation is the caller's own doing
            return None
        self._finished = True
        if kind == "ended":
            assert message is not None
            self.ended = message.ended
            return None
        if kind is None:  # a clean end of stream without `ended` breaks the API's promise
            raise protocol_error("the stream ended without `ended`")
        raise protocol_error(f"unexpected {kind!r} message during the session")

    async def change_prompt(self, prompt: str) -> None:
        """Ask the server to switch to ``prompt`` at its next chunk boundary."""
        call = self._require_call()
        if self._finished:
            raise ClientError(grpc.StatusCode.FAILED_PRECONDITION, "the session is over")
        call.write(change_prompt_request(prompt))

    async def stop(self) -> None:
        """Ask the server to end after the chunk in progress; keep iterating to receive it and ``ended``.

        Does nothing when the session is already over or stop was already sent.
        """
        call = self._require_call()
        if not (self._finished or self._stop_sent):
            self._stop_sent = True
            call.write(stop_request())

    async def _open(
        self, first: pb.GenerateRequest, metadata: tuple[tuple[str, str], ...] = ()
    ) -> tuple[GenerateCall, pb.SessionStarted]:
        call = self._new_call(metadata)
        try:
            call.write(first)
            message = await call.read()
            if message is None:
                raise protocol_error("the stream ended before `started`")
            if message.WhichOneof("response") != "started":
                raise protocol_error(f"the first message was {message.WhichOneof('response')!r}, not `started`")
        except BaseException:
            call.cancel()
            raise
        return call, message.started

    async def _read(self, call: GenerateCall) -> pb.GenerateResponse | None:
        """The next server message, None at the end of the stream or once closed; resumes a dropped call."""
        while True:
            try:
                return await call.read()
            except grpc.RpcError as error:
                if self._finished:
                    return None  # our own close() cancelled the call under this read
                failure = ClientError.from_rpc_error(error)
                if not self._can_resume(failure):
                    self._finished = True
                    raise failure from error
                log.warning("session %s: the call failed (%s); resuming after chunk %s", self._session_id, failure,
                            self._last_index)
                try:
                    call, self.started = await call_with_retries(self._resume, self._retries, "resuming the session")
                except ClientError as resume_error:
                    self._finished = True
                    if resume_error.code == grpc.StatusCode.NOT_FOUND:  # gone (drained, expired): the drop is the news
                        raise failure from resume_error
                    raise
                self._call = call
                self._owed_credit = False  # the resumed call starts with its own credit
                self.stats.resumes += 1

    def _can_resume(self, failure: ClientError) -> bool:
        started = self.started
        return (
            started is not None and bool(started.resume_token) and not self._stop_sent
            and failure.code in RESUMABLE_CODES
        )

    @property
    def _session_id(self) -> str:
        return self.started.session_id if self.started is not None else "?"

    async def _resume(self) -> tuple[GenerateCall, pb.SessionStarted]:
        assert self.started is not None
        request = resume_request(self.started.resume_token, self._last_index, self._start.start.initial_credits)
        return await self._open(request, ((SESSION_HEADER, self.started.session_id),))

    def _require_call(self) -> GenerateCall:
        if self._call is None:
            raise RuntimeError("enter the session (async with) before using it")
        return self._call
