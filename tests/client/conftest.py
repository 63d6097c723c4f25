"""Fixtures of the client tests: a fresh fake server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_streaming_server import FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()
