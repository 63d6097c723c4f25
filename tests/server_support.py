"""Running a real server on localhost for end-to-end tests, and driving raw sessions over gRPC."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.server.app import TokentrimServer
from tokentrim_server.server.config import load_config

SIZE = 32  # the smallest frame the tiny model takes (its grid is 16): fast chunks


class ServerThread:
    """A :class:`TokentrimServer` on its own event loop thread; use as a context manager."""

    def __init__(self, bundle: ModelBundle, *flags: str, environ: dict[str, str] | None = None) -> None:
        config = load_config(["--listen", "127.0.0.1:0", "--metrics-port", "0", *flags], environ or {})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.call(self._make, config, bundle)
        self.call(self.server.start)
        self.target = f"127.0.0.1:{self.server.ports[0]}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.StreamingServiceStub(self.channel)

    @staticmethod
    async def _make(config: Any, bundle: ModelBundle) -> TokentrimServer:
        return TokentrimServer(config, bundle)  # built on the loop: its asyncio objects belong there

    def call(self, coroutine_function: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine_function(*args), self.loop).result(timeout=120)

    @property
    def service(self):
        return self.server.service

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every session's device state is freed and its reservation released."""
        admission = self.service.admission
        deadline = time.monotonic() + timeout
        while admission.sessions or admission.reserved_bytes:
            assert time.monotonic() < deadline, f"{admission.sessions} sessions still hold resources"
            time.sleep(0.02)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()
        self.call(self.server.stop, 0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class RawSession:
    """One Generate call driven message by message (the protocol as a client library sees it)."""

    def __init__(self, stub: pb_grpc.StreamingServiceStub, start: pb.StartSession | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), first: pb.GenerateRequest | None = None) -> None:
        self._requests: queue.Queue[pb.GenerateRequest | None] = queue.Queue()
        self._requests.put(first if first is not None else pb.GenerateRequest(start=start))
        self.call = stub.Generate(iter(self._requests.get, None), metadata=metadata)

    def send(self, **request: Any) -> None:
        self._requests.put(pb.GenerateRequest(**request))

    def grant(self, chunks: int = 1) -> None:
        self.send(grant_credits=pb.GrantCredits(chunks=chunks))

    def close_requests(self) -> None:
        self._requests.put(None)

    def next(self) -> pb.GenerateResponse:
        return next(self.call)

    def chunks(self, grant: bool = True) -> Iterator[pb.Chunk]:
        """Chunks until the end message (kept in :attr:`ended`), granting a credit for each one consumed."""
        self.ended: pb.SessionEnded | None = None
        for response in self.call:
            kind = response.WhichOneof("response")
            if kind == "chunk":
                yield response.chunk
                if grant:
                    self.grant()
            elif kind == "ended":
                self.ended = response.ended
        self.close_requests()


def start(**fields: Any) -> pb.StartSession:
    """A StartSession for a fast tiny-model session; ``fields`` override."""
    defaults: dict[str, Any] = {"prompt": "a red ball", "seed": 7, "chunks": 2, "height": SIZE, "width": SIZE}
    return pb.StartSession(**{**defaults, **fields})


def rpc_error(function: Callable[[], Any]) -> grpc.RpcError:
    try:
        function()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded; an error was expected")
