"""Running a real server on localhost for end-to-end tests, and driving raw sessions over gRPC."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.server.background import BackgroundServer
from tokentrim_server.server.config import load_config
from tokentrim_server.server.service import StreamingService

SIZE = 32  # the smallest frame the tiny model takes (its grid is 16): fast chunks


class ServerThread(BackgroundServer):
    """A background server on a free localhost port with a metrics endpoint, plus a channel and stub to it."""

    def __init__(self, bundle: ModelBundle, *flags: str) -> None:
        super().__init__(bundle=bundle, config=load_config(
            ["--listen", "127.0.0.1:0", "--metrics-port", "0", *flags], {}))
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.StreamingServiceStub(self.channel)

    @property
    def service(self) -> StreamingService:
        return self.server.service

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every session's device state is freed and its reservation released."""
        admission = self.service.admission
        deadline = time.monotonic() + timeout
        while admission.sessions or admission.reserved_bytes:
            assert time.monotonic() < deadline, f"{admission.sessions} sessions still hold resources"
            time.sleep(0.02)

    def close(self) -> None:
        self.channel.close()
        super().close()


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
