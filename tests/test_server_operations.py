"""Operating the server: capacity limits, auth, TLS, clients vanishing, memory, health, reflection, metrics, drain."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tests.server_support import RawSession, ServerThread, rpc_error, start
from tokentrim_server.cache.kv_cache import KVCache
from tokentrim_server.policies import CacheHandle, CachePolicy, Candidate, Decision, Stage
from tokentrim_server.server import requests as requests_module


def live_caches() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is KVCache and obj.stats().allocated_bytes > 0)


def test_capacity_rejections_name_the_limit(tiny_bundle):
    with ServerThread(tiny_bundle, "--max-sessions", "1") as server:
        running = RawSession(server.stub, start(chunks=0, initial_credits=1))
        running.next()
        error = rpc_error(lambda: RawSession(server.stub, start()).next())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1 sessions" in error.details()
        running.send(stop=pb.StopSession())
        list(running.call)
        server.wait_idle()
        assert len(list(RawSession(server.stub, start(chunks=1)).chunks())) == 1
    # 32x32 frames of the tiny model: 4 tokens a frame; Self Forcing's default window is 21 frames.
    per_session = 21 * 4 * tiny_bundle.transformer.kv_bytes_per_token()
    with ServerThread(tiny_bundle, "--cache-budget", str(per_session + per_session // 2)) as server:
        running = RawSession(server.stub, start(chunks=0, initial_credits=1))
        running.next()
        error = rpc_error(lambda: RawSession(server.stub, start(chunks=0)).next())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "KV-cache budget" in error.details()
        too_big = rpc_error(lambda: RawSession(server.stub, start(chunks=0, height=64, width=64)).next())
        assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT and "whole budget" in too_big.details()
        running.close_requests()
        list(running.call)
        metrics = scrape(server)
        assert 'tokentrim_sessions_rejected_total{reason="cache_budget"} 1.0' in metrics


def test_bearer_token_auth(tiny_bundle, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nsecret-one\nsecret-two\n")
    with ServerThread(tiny_bundle, "--auth-token-file", str(tokens)) as server:
        for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "secret-one"),)]:
            error = rpc_error(lambda metadata=metadata: RawSession(server.stub, start(), metadata).next())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = rpc_error(lambda: server.stub.GetServerInfo(pb.GetServerInfoRequest()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer secret-two"),)
        assert server.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=good).model == "tiny"
        session = RawSession(server.stub, start(chunks=1), good)
        assert len(list(session.chunks())) == 1
        # Health is exempt: orchestrators probe it without credentials.
        health = health_pb2_grpc.HealthStub(server.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert 'tokentrim_sessions_rejected_total{reason="unauthenticated"} 3.0' in scrape(server)


def test_tls(tiny_bundle, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    with ServerThread(tiny_bundle, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        port = server.server.ports[0]
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = pb_grpc.StreamingServiceStub(channel)
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).model == "tiny"
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            error = rpc_error(lambda: pb_grpc.StreamingServiceStub(channel).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=5))
            assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_vanishing_clients_free_everything(tiny_bundle):
    """Sessions cut off mid-chunk, mid-stream or while opening leave no cache, reservation or gauge behind.

    Without holding for a resume; a held session frees the same once its hold expires (test_session_resume).
    """
    with ServerThread(tiny_bundle, "--max-sessions", "8", "--resume-hold-seconds", "0") as server:
        baseline = live_caches()
        for round_ in range(6):
            sessions = [RawSession(server.stub, start(chunks=0, seed=round_ * 10 + i, initial_credits=4))
                        for i in range(3)]
            sessions[0].next()  # started, chunks being generated
            time.sleep(0.05 * round_)  # cut off at different points of a chunk
            for session in sessions:
                session.call.cancel()
            completed = RawSession(server.stub, start(chunks=2, seed=round_))
            assert len(list(completed.chunks())) == 2
        server.wait_idle()
        assert live_caches() == baseline
        metrics = scrape(server)
        assert "tokentrim_sessions_active 0.0" in metrics
        assert "tokentrim_kv_cache_bytes 0.0" in metrics
        assert "tokentrim_kv_cache_reserved_bytes 0.0" in metrics
        assert 'tokentrim_sessions_ended_total{reason="cancelled"}' in metrics


def test_health_reflection_and_info(tiny_bundle):
    with ServerThread(tiny_bundle) as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        for service in ("", "tokentrim.v1.StreamingService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for reply in replies for service in reply.list_services_response.service}
        assert {"tokentrim.v1.StreamingService", "grpc.health.v1.Health"} <= names
        info = server.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert {p.name for p in info.pipelines} == {"self_forcing", "rolling_forcing", "longlive"}
        assert {p.name for p in info.cache_policies} >= {"none", "tokentrim", "random"}
        assert "flowmo" in {h.name for h in info.session_hooks}
        tokentrim = next(p for p in info.cache_policies if p.name == "tokentrim")
        assert "prune_ratio" in {entry["name"] for entry in tokentrim.parameters}
        assert info.limits.size_multiple == 16 and info.default_height == 128
        assert info.versions["torch"]


def scrape(server: ServerThread) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_metrics_scrape_holds_the_series(tiny_bundle):
    with ServerThread(tiny_bundle) as server:
        list(RawSession(server.stub, start(chunks=3, cache_policy=pb.PluginConfig(name="random"))).chunks())
        text = scrape(server)
    for series in (
        'tokentrim_chunks_total{pipeline="self_forcing",policy="random"} 3.0',
        'tokentrim_frames_total{pipeline="self_forcing"} 33.0',
        'tokentrim_sessions_started_total{pipeline="self_forcing",policy="random"} 1.0',
        'tokentrim_sessions_ended_total{reason="completed"} 1.0',
        "tokentrim_chunk_latency_seconds_bucket",
        "tokentrim_time_to_first_frame_seconds_count",
        "tokentrim_session_frames_per_second_bucket",
        'tokentrim_policy_chunks_inspected_total{policy="random"}',
        'tokentrim_policy_triggers_total{policy="tokentrim"} 0.0',
        "tokentrim_policy_drift_severity_bucket",
        "tokentrim_kv_cache_budget_bytes",
        "tokentrim_sessions_max 4.0",
        'tokentrim_chunk_stage_seconds_count{stage="decode"} 3.0',
    ):
        assert series in text, series
    labels = {name for family in text_string_to_metric_families(text) for sample in family.samples
              for name in sample.labels}
    assert labels <= {"pipeline", "policy", "reason", "stage", "hook", "value", "le", "version", "model"}, labels


def test_drain_refuses_new_sessions_and_ends_running_ones(tiny_bundle):
    with ServerThread(tiny_bundle, "--drain-seconds", "0.5") as server:
        running = RawSession(server.stub, start(chunks=0))
        running.next()
        health = health_pb2_grpc.HealthStub(server.channel)
        errors: list[grpc.RpcError] = []
        received: list[int] = []

        def consume() -> None:
            try:
                received.extend(chunk.index for chunk in running.chunks())
            except grpc.RpcError as error:
                errors.append(error)

        consumer = threading.Thread(target=consume)
        consumer.start()
        stopping = asyncio.run_coroutine_threadsafe(server.server.drain_and_stop(), server.loop)
        time.sleep(0.2)  # inside the grace period
        status = health.Check(health_pb2.HealthCheckRequest()).status
        refused = rpc_error(lambda: RawSession(server.stub, start()).next())
        stopping.result(timeout=60)
        consumer.join(timeout=60)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert refused.code() == grpc.StatusCode.UNAVAILABLE and "draining" in refused.details()
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE, errors
        assert "shutting down" in errors[0].details()
        assert received  # the running session kept streaming during its grace period
        assert server.service.admission.sessions == 0


class ExplodingPolicy(CachePolicy):
    """Fails on its third inspected chunk, as a buggy third-party policy might."""

    name = "explode"

    @property
    def stage(self) -> Stage:
        return "final"

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        if candidate.chunk == 2:
            raise RuntimeError("policy bug")
        return Decision()


def test_one_failing_session_leaves_the_others_untouched(tiny_bundle, monkeypatch):
    real = requests_module.create_policy
    monkeypatch.setattr(requests_module, "create_policy",
                        lambda name, params: ExplodingPolicy() if name == "explode" else real(name, params))
    with ServerThread(tiny_bundle) as server:
        healthy = RawSession(server.stub, start(chunks=6, initial_credits=1))
        healthy.next()
        failing = RawSession(server.stub, start(chunks=6, cache_policy=pb.PluginConfig(name="explode")))
        error = rpc_error(lambda: list(failing.chunks()))
        # The status names an error id for the log, never the exception (issue #16).
        assert error.code() == grpc.StatusCode.INTERNAL and "error id" in error.details()
        assert "policy bug" not in error.details()
        assert [chunk.index for chunk in healthy.chunks()] == list(range(6))
        server.wait_idle()
        assert 'tokentrim_sessions_ended_total{reason="error"} 1.0' in scrape(server)
