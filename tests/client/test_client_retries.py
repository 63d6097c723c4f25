"""Retries, error codes and connection security against the fake server."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from tokentrim_client import AsyncClient, Client, ClientError, RetryPolicy

from .fake_streaming_server import FakeServer, unused_port

FAST = RetryPolicy(retries=3, initial_backoff=0.01, max_backoff=0.02)


def _run_session(target: str, retries: RetryPolicy = FAST, **client_options) -> int:
    async def run() -> int:
        async with (
            AsyncClient(target, retries=retries, **client_options) as client,
            client.session("p", chunks=2) as session,
        ):
            return len([chunk async for chunk in session])

    return asyncio.run(run())


def test_opening_retries_unavailable_and_resource_exhausted_then_succeeds(fake_server: FakeServer) -> None:
    service = fake_server.service
    service.failures.extend([(grpc.StatusCode.UNAVAILABLE, "draining"), (grpc.StatusCode.RESOURCE_EXHAUSTED, "full")])
    assert _run_session(fake_server.target) == 2
    assert len(service.sessions) == 3


def test_unary_calls_are_retried(fake_server: FakeServer) -> None:
    fake_server.service.failures.append((grpc.StatusCode.UNAVAILABLE, "restarting"))
    with Client(fake_server.target, retries=FAST) as client:
        assert client.server_info().model == "fake"
    assert len(fake_server.service.info_metadata) == 2


def test_invalid_argument_is_not_retried(fake_server: FakeServer) -> None:
    fake_server.service.failures.append((grpc.StatusCode.INVALID_ARGUMENT, "start.chunks: at most 64"))
    with pytest.raises(ClientError) as caught:
        _run_session(fake_server.target)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.details == "start.chunks: at most 64"
    assert error.attempts == 1 and "INVALID_ARGUMENT: start.chunks: at most 64" in str(error)
    assert len(fake_server.service.sessions) == 1


def test_retries_give_up_with_the_last_error(fake_server: FakeServer) -> None:
    fake_server.service.failures.extend([(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sessions (4) reached")] * 5)
    with pytest.raises(ClientError) as caught:
        _run_session(fake_server.target, RetryPolicy(retries=2, initial_backoff=0.01))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.attempts == 3
    assert len(fake_server.service.sessions) == 3


def test_immediate_rejections_keep_their_status(fake_server: FakeServer) -> None:
    """A server that rejects before reading `start` must not turn into INTERNAL (grpc/grpc#36066 with grpc.aio)."""
    fake_server.service.failures.extend([(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")] * 40)

    async def open_many() -> set[grpc.StatusCode]:
        codes = set()
        async with AsyncClient(fake_server.target, retries=RetryPolicy(retries=0)) as client:
            for _ in range(40):
                with pytest.raises(ClientError) as caught:
                    async with client.session("p"):
                        pass
                codes.add(caught.value.code)
        return codes

    assert asyncio.run(open_many()) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_errors_after_the_first_chunk_are_raised_not_retried(fake_server: FakeServer) -> None:
    fake_server.service.fail_after_chunks = (1, grpc.StatusCode.UNAVAILABLE, "server shutting down")

    async def run() -> list[int]:
        received = []
        async with AsyncClient(fake_server.target, retries=FAST) as client, client.session("p") as session:
            with pytest.raises(ClientError) as caught:
                async for chunk in session:
                    received.append(chunk.index)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.details == "server shutting down"
        return received

    assert asyncio.run(run()) == [0]
    assert len(fake_server.service.sessions) == 1


def test_missing_token_is_unauthenticated_and_not_retried(fake_server: FakeServer) -> None:
    fake_server.service.required_token = "s3cret"
    with pytest.raises(ClientError) as caught:
        _run_session(fake_server.target)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and caught.value.attempts == 1


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with pytest.raises(ClientError) as caught, Client(f"127.0.0.1:{unused_port()}", retries=FAST) as client:
        client.health()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 4


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(retries=10, initial_backoff=0.5, max_backoff=4.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    for retry, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0]):
        assert ceiling * 0.5 <= policy.delay(retry, rng) <= ceiling
    assert RetryPolicy(jitter=0.0, initial_backoff=0.5).delay(1) == 1.0
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")


@needs_openssl
def test_tls_with_root_certificates_from_a_file(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    server = FakeServer(grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])).start()
    try:
        assert _run_session(server.target, root_certificates=str(cert), token="t") == 2
        assert server.service.sessions[0].metadata["authorization"] == "Bearer t"
        with pytest.raises(ClientError) as caught:  # a plaintext client cannot talk to a TLS server
            _run_session(server.target, RetryPolicy(retries=0))
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


@needs_openssl
def test_mutual_tls_with_a_client_certificate(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)  # one self-signed pair serves as server and client identity and as CA
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=cert.read_bytes(), require_client_auth=True
    )
    server = FakeServer(credentials).start()
    try:
        assert _run_session(server.target, root_certificates=cert, client_certificate=cert, client_key=key) == 2
        with pytest.raises(ClientError):  # without the client certificate the handshake fails
            _run_session(server.target, RetryPolicy(retries=0), root_certificates=cert)
        with pytest.raises(ValueError, match="together"):
            AsyncClient(server.target, client_certificate=cert)
    finally:
        server.stop()
