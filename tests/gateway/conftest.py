"""A tiny-model server and a gateway in front of it, shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.gateway_support import GatewayThread
from tokentrim_server.server.background import BackgroundServer


@pytest.fixture(scope="module")
def server(tiny_bundle) -> Iterator[BackgroundServer]:
    with BackgroundServer(bundle=tiny_bundle) as background:
        yield background


@pytest.fixture(scope="module")
def gateway(server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    running = GatewayThread(server.target, "--recording-dir", str(tmp_path_factory.mktemp("recordings")))
    yield running
    running.close()
