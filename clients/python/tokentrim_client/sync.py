"""The blocking client: the asyncio client run on a private event-loop thread.

Every call hands a coroutine to that loop and waits for it, so the logic lives once, in the async client, and
grpc.aio objects only ever touch the loop they were made on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_client.aio import AsyncClient, SessionResult
from tokentrim_client.decoding import ReceivedChunk
from tokentrim_client.session import AsyncSession, SessionStats

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tokentrim-client-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait; an interrupt here (Ctrl-C) cancels it there."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Session:
    """The blocking face of ``AsyncSession``: a context manager and an iterator of ``ReceivedChunk``."""

    def __init__(self, runner: _LoopThread, inner: AsyncSession) -> None:
        self._runner = runner
        self._inner = inner

    @property
    def started(self) -> pb.SessionStarted | None:
        return self._inner.started

    @property
    def ended(self) -> pb.SessionEnded | None:
        return self._inner.ended

    @property
    def stats(self) -> SessionStats:
        return self._inner.stats

    def __enter__(self) -> Session:
        self._runner.run(self._inner.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._runner.run(self._inner.close())

    def __iter__(self) -> Iterator[ReceivedChunk]:
        return self

    def __next__(self) -> ReceivedChunk:
        chunk = self._runner.run(self._inner.next_chunk())
        if chunk is None:
            raise StopIteration
        return chunk

    def change_prompt(self, prompt: str) -> None:
        self._runner.run(self._inner.change_prompt(prompt))

    def stop(self) -> None:
        self._runner.run(self._inner.stop())


class Client:
    """The blocking client. ``options`` are ``AsyncClient``'s keyword arguments (token, root_certificates,
    retries, tls, timeout, channel_options); close it or use it as ``with``."""

    def __init__(self, target: str, **options: Any) -> None:
        self._client = AsyncClient(target, **options)  # first: it rejects a bad token before a thread starts
        self._runner = _LoopThread()

    @property
    def target(self) -> str:
        return self._client.target

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._runner.loop.is_closed():
            self._runner.run(self._client.close())
            self._runner.close()

    def server_info(self) -> pb.GetServerInfoResponse:
        return self._runner.run(self._client.server_info())

    def health(self, service: str = "") -> bool:
        return self._runner.run(self._client.health(service))

    def session(self, prompt: str, **options: Any) -> Session:
        return Session(self._runner, self._client.session(prompt, **options))

    def generate(self, prompt: str, **options: Any) -> SessionResult:
        return self._runner.run(self._client.generate(prompt, **options))
