"""A server on a background thread with its own event loop: for embedding in a program, tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.server.app import TokentrimServer
from tokentrim_server.server.config import ServerConfig, load_config

T = TypeVar("T")


class BackgroundServer:
    """Start with ``BackgroundServer(config_flags, bundle)``; ``target`` is its first listen address.

    ``flags`` are ``tokentrim-server`` flags (the environment is ignored, so a stray ``TOKENTRIM_*`` variable
    cannot change a test); the default listens on a free localhost port without a metrics endpoint.
    """

    def __init__(self, flags: Sequence[str] = (), bundle: ModelBundle | None = None,
                 config: ServerConfig | None = None) -> None:
        config = config or load_config(["--listen", "127.0.0.1:0", "--metrics-port", "-1", *flags], {})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tokentrim-server-loop", daemon=True)
        self._thread.start()
        self.server: TokentrimServer = self.call(self._build, config, bundle)
        self.call(self.server.start)
        self.target = f"127.0.0.1:{self.server.ports[0]}"

    @staticmethod
    async def _build(config: ServerConfig, bundle: ModelBundle | None) -> TokentrimServer:
        return TokentrimServer(config, bundle)  # built on the loop, so its asyncio objects belong to it

    def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 600) -> T:
        """Run ``function(*args)`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(function(*args), self.loop).result(timeout=timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.server.stop, 0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
