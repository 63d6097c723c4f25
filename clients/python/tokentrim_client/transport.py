"""grpc's threaded API, awaited from asyncio.

Why not grpc.aio: when a server ends a streaming call before reading everything the client sent (an auth
interceptor or an admission check rejecting at once, a drain, the session's last chunk racing a credit grant),
a grpc.aio client write that meets the closed stream replaces the server's status with ``INTERNAL: Internal
error from Core`` and drops the messages still buffered (grpc/grpc#36066, unfixed in grpcio 1.85). That would
turn RESOURCE_EXHAUSTED into an error that is never retried and lose a session's ``ended``. The threaded API
reports the server's status whatever the client wrote, so the calls run there and asyncio awaits them:
unary calls through their grpc future, a stream through a request queue and a reader thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any, Generic, TypeVar

import grpc

Request = TypeVar("Request")
Response = TypeVar("Response")

_END = object()  # closes the request stream (half-close) and ends the reader's queue


async def await_grpc_future(future: grpc.Future) -> Any:
    """The result of a grpc future (a unary call's ``.future(...)``); cancelling the await cancels the call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(_: grpc.Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            loop.call_soon_threadsafe(_copy_outcome, future, waiter)

    future.add_done_callback(settle)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise


def _copy_outcome(source: grpc.Future, target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class StreamCall(Generic[Request, Response]):
    """One bidirectional call. ``write`` queues a message and never blocks or fails (once the call is over the
    message is dropped); ``read`` awaits the next message, None at the end, or raises the call's grpc.RpcError.

    Must be made on the event loop that reads it. Nothing is read ahead beyond what the server sends, and the
    server sends only what the session's credit allows, so the buffer between the threads stays small.
    """

    def __init__(self, method: grpc.StreamStreamMultiCallable, metadata: tuple[tuple[str, str], ...]) -> None:
        self._loop = asyncio.get_running_loop()
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._responses = method(self._outgoing(), metadata=metadata)
        self._reader = threading.Thread(target=self._pump, name="tokentrim-client-reader", daemon=True)
        self._reader.start()

    def write(self, request: Request) -> None:
        self._requests.put(request)

    def cancel(self) -> None:
        self._responses.cancel()
        self._requests.put(_END)

    def done(self) -> bool:
        return self._responses.done()

    async def read(self) -> Response | None:
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put_nowait(_END)  # later reads see the end too
            return None
        if isinstance(item, grpc.RpcError):
            self._inbox.put_nowait(item)
            raise item
        return item

    def _outgoing(self) -> Any:
        while (request := self._requests.get()) is not _END:
            yield request

    def _pump(self) -> None:
        """The reader thread: hands each response to the loop, then the end or the error."""
        try:
            for response in self._responses:
                self._deliver(response)
            self._deliver(_END)
        except grpc.RpcError as error:
            self._deliver(error)
        finally:
            self._requests.put(_END)  # frees grpc's request-sending thread once the call is over

    def _deliver(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the session was abandoned
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, item)
