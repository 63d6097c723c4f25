"""The start-up warm-up: how many chunks, health while it runs, what it touches, and a failing one."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server_support import RawSession, ServerThread, start
from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.server.app import SERVICE_NAME, TokentrimServer, WarmupError, resolve_warmup_chunks
from tokentrim_server.server.config import ConfigError, load_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    "flags, device, expected",
    [
        ([], "cpu", 0),
        ([], "cuda", 2),
        (["--compile"], "cpu", 2),
        (["--warmup-chunks", "0", "--compile"], "cuda", 0),
        (["--warmup-chunks", "5"], "cpu", 5),
    ],
)
def test_resolve_warmup_chunks(flags, device, expected):
    assert resolve_warmup_chunks(load_config(flags, {}), torch.device(device)) == expected


def health_statuses(port: int) -> tuple[int, int]:
    """What a client sees for the whole server and for the streaming service."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return tuple(stub.Check(health_pb2.HealthCheckRequest(service=name)).status for name in ("", SERVICE_NAME))


class Recorder:
    """Counts the warm-up's device calls and records the thread of each and the health a client saw meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.servers: list[TokentrimServer] = []
        self.steps: list[tuple[str, tuple[int, int]]] = []
        self.decodes: list[str] = []
        self.closes: list[str] = []
        self.plans = []
        warm_up, step, decode, close = (TokentrimServer.warm_up, GenerationSession.step, GenerationSession.decode,
                                        GenerationSession.close)

        async def recording_warm_up(server: TokentrimServer, chunks: int) -> None:
            self.servers.append(server)
            await warm_up(server, chunks)

        def recording_step(session: GenerationSession):
            self.plans.append(session.plan)
            self.steps.append((threading.current_thread().name, health_statuses(self.servers[-1].ports[0])))
            return step(session)

        def recording_decode(session: GenerationSession, *args):
            self.decodes.append(threading.current_thread().name)
            return decode(session, *args)

        def recording_close(session: GenerationSession) -> None:
            self.closes.append(threading.current_thread().name)
            close(session)

        monkeypatch.setattr(TokentrimServer, "warm_up", recording_warm_up)
        monkeypatch.setattr(GenerationSession, "step", recording_step)
        monkeypatch.setattr(GenerationSession, "decode", recording_decode)
        monkeypatch.setattr(GenerationSession, "close", recording_close)


def samples(server: ServerThread, family: str) -> float:
    return sum(sample.value for metric in server.server.metrics.registry.collect() if metric.name == family
               for sample in metric.samples if sample.name.endswith("_total"))


def test_warm_up_runs_its_chunks_before_serving(tiny_bundle, monkeypatch):
    recorder = Recorder(monkeypatch)
    with ServerThread(tiny_bundle, "--warmup-chunks", "2", "--default-policy", "tokentrim") as server:
        # Exactly two chunks, each denoised on the device worker while health said NOT_SERVING, decoded on the
        # render worker, then the session freed on the device worker; only then SERVING.
        assert [thread.startswith("tokentrim-device") for thread, _ in recorder.steps] == [True, True]
        assert [statuses for _, statuses in recorder.steps] == [(NOT_SERVING, NOT_SERVING)] * 2
        assert [thread.startswith("tokentrim-render") for thread in recorder.decodes] == [True, True]
        assert [thread.startswith("tokentrim-device") for thread in recorder.closes] == [True]
        assert health_statuses(server.server.ports[0]) == (SERVING, SERVING)
        # The session a client naming only a prompt gets: the server's default size, pipeline and policy.
        plan = recorder.plans[0]
        assert (plan.height, plan.width) == tiny_bundle.default_size
        assert (plan.pipeline, plan.policy.name, plan.decode) == ("self_forcing", "tokentrim", True)
        # Neither admission nor the session metrics saw it.
        assert server.service.admission.sessions == 0 and server.service.admission.reserved_bytes == 0
        assert samples(server, "tokentrim_sessions_started") == 0 and samples(server, "tokentrim_chunks") == 0
        # A client is served as usual afterwards.
        assert len(list(RawSession(server.stub, start(chunks=1)).chunks())) == 1
        assert samples(server, "tokentrim_chunks") == 1


def test_no_warm_up_by_default_on_cpu(tiny_bundle, monkeypatch):
    recorder = Recorder(monkeypatch)
    with ServerThread(tiny_bundle) as server:
        assert recorder.steps == [] and health_statuses(server.server.ports[0]) == (SERVING, SERVING)


def test_failing_warm_up_fails_start(tiny_bundle, monkeypatch):
    def broken_step(session: GenerationSession):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(GenerationSession, "step", broken_step)

    async def scenario() -> TokentrimServer:
        server = TokentrimServer(load_config(["--listen", "127.0.0.1:0", "--metrics-port", "-1",
                                              "--warmup-chunks", "2"], {}), tiny_bundle)
        with pytest.raises(WarmupError, match="chunk 0 of 2 failed: RuntimeError: the device fell over"):
            await server.start()
        return server

    server = asyncio.run(scenario())
    # start() stopped what it had started: no port left answering NOT_SERVING for ever.
    with pytest.raises(grpc.RpcError) as error:
        health_statuses(server.ports[0])
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_warm_up_longer_than_a_session_is_refused(tiny_bundle):
    async def scenario() -> None:
        server = TokentrimServer(load_config(["--listen", "127.0.0.1:0", "--metrics-port", "-1",
                                              "--warmup-chunks", "4", "--max-chunks", "3"], {}), tiny_bundle)
        with pytest.raises(ConfigError, match=r"warmup_chunks \(4\) must be at most a session's 3 chunks"):
            await server.start()

    asyncio.run(scenario())
