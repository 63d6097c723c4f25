"""The ``tokentrim-server`` process: starts from flags, serves, drains on SIGTERM and exits cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tests.server_support import RawSession, start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(channel: grpc.Channel, process: subprocess.Popen, timeout: float = 120) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise AssertionError("the server did not become SERVING")


def test_sigterm_drains_then_exits_zero():
    port = free_port()
    env = {**os.environ, "TOKENTRIM_DRAIN_SECONDS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokentrim_server.server", "--listen", f"127.0.0.1:{port}", "--metrics-port", "-1"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, process)
            session = RawSession(pb_grpc.StreamingServiceStub(channel), start(chunks=0))
            session.next()
            outcome: list[object] = []

            def consume() -> None:
                try:
                    outcome.extend(session.chunks())
                except grpc.RpcError as error:
                    outcome.append(error)

            consumer = threading.Thread(target=consume)
            consumer.start()
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            consumer.join(timeout=60)
            assert isinstance(outcome[-1], grpc.RpcError) and outcome[-1].code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert "draining" in log and "received SIGTERM" in log
    finally:
        process.kill()
        process.wait()


def test_bad_flag_exits_2_naming_the_option():
    result = subprocess.run([sys.executable, "-m", "tokentrim_server.server", "--max-sessions", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "max_sessions must be > 0" in result.stderr
