"""Assembling and running the server: model, workers, gRPC services, metrics endpoint, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_server import __version__
from tokentrim_server.engine.admission import Admission
from tokentrim_server.engine.worker import DeviceWorker
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.pipelines.registry import PIPELINES
from tokentrim_server.policies import policy_names
from tokentrim_server.server.auth import BearerTokenInterceptor
from tokentrim_server.server.config import ConfigError, ServerConfig, parse_size
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import RequestValidator
from tokentrim_server.server.service import StreamingService
from tokentrim_server.server.session import Workers

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StreamingService"].full_name
CPU_CACHE_BUDGET = 4 * 2**30
# A chunk of raw RGB at 1280x1280 is about 59 MB; keep sends well above the largest payload.
MAX_SEND_BYTES = 256 * 2**20


def model_spec(config: ServerConfig) -> ModelSpec:
    dtype = config.dtype or ("float32" if config.device == "cpu" else "bfloat16")
    return ModelSpec(
        model=config.model, checkpoint=config.checkpoint, checkpoint_key=config.checkpoint_key,
        device=config.device, dtype=dtype, attention_backend=config.attention_backend,
    )


def resolve_cache_budget(config: ServerConfig, device: torch.device) -> int:
    """The KV-cache budget in bytes; ``auto``: half the device memory still free after loading the model."""
    if config.cache_budget != "auto":
        return parse_size(config.cache_budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_CACHE_BUDGET


def channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Message sizes and keepalive, chosen for long-lived streams behind load balancers."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # Ping idle connections so dead clients are noticed and NAT/LB state stays alive.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping every 10 s without being disconnected for "too many pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    except OSError as error:
        raise ConfigError(f"TLS files: cannot read {error.filename}: {error.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class TokentrimServer:
    """One server process's worth of state; ``bundle`` may be passed in (tests share one tiny model)."""

    def __init__(self, config: ServerConfig, bundle: ModelBundle | None = None) -> None:
        self.config = config
        self.bundle = bundle or load_model(model_spec(config))
        budget = resolve_cache_budget(config, self.bundle.transformer.device)
        self.metrics = ServerMetrics(config.max_sessions, budget, self.bundle.name, __version__)
        self.metrics.declare_plugins(policy_names(), PIPELINES)
        self.workers = Workers(DeviceWorker("tokentrim-device"), DeviceWorker("tokentrim-render"))
        validator = RequestValidator(config, self.bundle, self.bundle.default_size, budget)
        self.service = StreamingService(
            self.bundle, validator, Admission(config.max_sessions, budget), self.metrics, self.workers
        )
        self.health = health.aio.HealthServicer()
        self.ports: list[int] = []
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        config = self.config
        tokens = config.tokens()
        interceptors = [BearerTokenInterceptor(tokens, self.metrics)] if tokens else []
        server = grpc.aio.server(interceptors=interceptors, options=channel_options(config))
        pb_grpc.add_StreamingServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        credentials = _credentials(config)
        for address in config.listen:
            port = (server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address))
            if port == 0:
                raise ConfigError(f"listen: cannot bind {address}")
            self.ports.append(port)
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.metrics_port, config.metrics_address)
        log.info("serving %s on %s (%s), metrics on :%s, auth %s, TLS %s", self.bundle.name,
                 ", ".join(config.listen), ", ".join(map(str, self.ports)), self.metrics_port,
                 "on" if tokens else "off", "on" if credentials else "off")

    async def drain_and_stop(self) -> None:
        """SIGTERM: NOT_SERVING, refuse new sessions, give running ones the grace period, then stop."""
        log.info("draining: %d sessions running, grace %.0f s", len(self.service.sessions), self.config.drain_seconds)
        await self.health.enter_graceful_shutdown()
        await self.service.drain(self.config.drain_seconds)
        await self.stop(grace=5.0)

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.metrics.close()
        # Sessions' clean-up jobs are queued on the workers; let them finish before the process exits.
        await asyncio.to_thread(self.workers.render.shutdown)
        await asyncio.to_thread(self.workers.denoise.shutdown)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    server = TokentrimServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping is None:
            log.info("received %s", signal.Signals(signum).name)
            stopping = loop.create_task(server.drain_and_stop())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait()
    if stopping is not None:
        await stopping
