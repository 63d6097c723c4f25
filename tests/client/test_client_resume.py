"""The client survives a dropped connection: it resumes the session, and the caller sees no gap and no duplicate.

A TCP proxy on loopback stands between the client and a real server; cutting every connection through it is a
network failure as both ends see one (the client an UNAVAILABLE call, the server a vanished peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import numpy as np
import pytest
from tokentrim_client import AsyncClient, RetryPolicy

from tests.server_support import ServerThread

CHUNKS = 6
FAST_RETRIES = RetryPolicy(retries=5, initial_backoff=0.05, max_backoff=0.2)


class CuttableProxy:
    """Forwards TCP connections from a free loopback port to ``target``; :meth:`cut` drops them all at once."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def stream(target: str, cut_after: int | None = None, proxy: CuttableProxy | None = None):
    async with AsyncClient(target, retries=FAST_RETRIES) as client, client.session(
        "a red ball", chunks=CHUNKS, seed=5, encoding="raw", width=32, height=32, credits=2
    ) as session:
        chunks = []
        async for chunk in session:
            chunks.append(chunk)
            if proxy is not None and len(chunks) == cut_after:
                proxy.cut()
        return chunks, session.stats.resumes, session.ended


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with ServerThread(tiny_bundle, "--resume-hold-seconds", "30") as running:
        yield running


@pytest.mark.parametrize("cut_after", [1, 4])
def test_a_dropped_connection_is_resumed_without_gap_or_duplicate(server, cut_after):
    expected, _, _ = asyncio.run(stream(server.target))
    proxy = CuttableProxy(server.target)
    try:
        chunks, resumes, ended = asyncio.run(stream(proxy.address, cut_after, proxy))
    finally:
        proxy.close()
    assert resumes == 1 and ended is not None
    assert [chunk.index for chunk in chunks] == list(range(CHUNKS))
    for ours, theirs in zip(chunks, expected, strict=True):
        assert np.array_equal(ours.frames, theirs.frames)
    server.wait_idle()
