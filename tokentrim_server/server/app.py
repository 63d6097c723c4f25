"""Assembling and running the server: model, workers, gRPC services, metrics endpoint, warm-up, graceful drain."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_server import __version__
from tokentrim_server.engine.admission import Admission, RealtimeMeter
from tokentrim_server.engine.driver import Workers
from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.engine.worker import DeviceWorker
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.pipelines.registry import PIPELINES
from tokentrim_server.policies import policy_names
from tokentrim_server.server.auth import BearerTokenInterceptor
from tokentrim_server.server.config import ConfigError, ServerConfig, parse_size
from tokentrim_server.server.decoding import add_tolerant_service
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import RequestError, RequestValidator
from tokentrim_server.server.service import StreamingService
from tokentrim_server.server.session import VIDEO_FPS

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["StreamingService"]
SERVICE_NAME = SERVICE.full_name
CPU_CACHE_BUDGET = 4 * 2**30
# A chunk of raw RGB at 1280x1280 is about 59 MB; keep sends well above the largest payload.
MAX_SEND_BYTES = 256 * 2**20
# Two chunks: a compiled model compiles at a session's first chunk and recompiles once at its second
# (docs/performance.md), and the VAE decodes a first chunk differently from the ones after it.
AUTO_WARMUP_CHUNKS = 2
WARMUP_PROMPT = "warm-up"


class WarmupError(RuntimeError):
    """The start-up warm-up session failed: the model cannot serve, so the server must not report SERVING."""


def model_spec(config: ServerConfig) -> ModelSpec:
    dtype = config.dtype or ("float32" if config.device == "cpu" else "bfloat16")
    return ModelSpec(
        model=config.model, checkpoint=config.checkpoint, checkpoint_key=config.checkpoint_key,
        device=config.device, dtype=dtype, attention_backend=config.attention_backend, compile=config.compile,
    )


def public_model_name(config: ServerConfig) -> str:
    """The name the server publishes for its model: ``model_name``, else the model folder's own name.

    Never the path: it tells clients and scrapers nothing they need and something about the host.
    """
    return config.model_name or Path(config.model.rstrip("/\\")).name or config.model


def is_loopback(address: str) -> bool:
    """Whether a ``HOST:PORT`` listen address accepts only local connections."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def resolve_warmup_chunks(config: ServerConfig, device: torch.device) -> int:
    """Warm-up chunks to run; ``-1``: enough to compile when compiling, and to warm CUDA (kernels, allocator)."""
    if config.warmup_chunks >= 0:
        return config.warmup_chunks
    return AUTO_WARMUP_CHUNKS if config.compile or device.type == "cuda" else 0


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
        self.model_name = public_model_name(config)
        self.metrics = ServerMetrics(config.max_sessions, budget, self.model_name, __version__)
        self.metrics.declare_plugins(policy_names(), PIPELINES)
        device = DeviceWorker(
            "tokentrim-device", max_batch=config.max_batch_sessions, fairness_seconds=config.scheduler_fairness_seconds
        )
        self.workers = Workers(device, DeviceWorker("tokentrim-render", max_batch=config.max_batch_sessions))
        self.metrics.queue_depth.set_function(device.queued_batchable)
        validator = RequestValidator(config, self.bundle, self.bundle.default_size, budget)
        realtime = RealtimeMeter(VIDEO_FPS) if config.realtime_admission else None
        self.service = StreamingService(
            self.bundle, validator, Admission(config.max_sessions, budget, realtime), self.metrics, self.workers,
            self.model_name,
        )
        self.health = health.aio.HealthServicer()
        self.ports: list[int] = []
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind, serve health as NOT_SERVING while the warm-up runs, then SERVING (raises if the warm-up fails)."""
        config = self.config
        tokens = config.tokens()
        interceptors = [BearerTokenInterceptor(tokens, self.metrics)] if tokens else []
        server = grpc.aio.server(interceptors=interceptors, options=channel_options(config))
        add_tolerant_service(self.service, SERVICE, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        # The servicer starts out SERVING for ""; nothing may report ready before the warm-up is done.
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = _credentials(config)
        for address in config.listen:
            port = (server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address))
            if port == 0:
                raise ConfigError(f"listen: cannot bind {address}")
            self.ports.append(port)
        await server.start()
        self._server = server
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.metrics_port, config.metrics_address)
        try:
            await self.warm_up(resolve_warmup_chunks(config, self.bundle.transformer.device))
        except BaseException:  # a broken model must not keep serving, nor keep the ports and threads
            await self.stop(grace=0)
            raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        exposed = [address for address in config.listen if not is_loopback(address)]
        if exposed and not tokens:
            log.warning("listening on %s beyond loopback without authentication: anyone who can reach it may run "
                        "sessions (set auth_token_file or auth_tokens)", ", ".join(exposed))
        log.info("serving %s on %s (%s), metrics on :%s, auth %s, TLS %s", self.model_name,
                 ", ".join(config.listen), ", ".join(map(str, self.ports)), self.metrics_port,
                 "on" if tokens else "off", "on" if credentials else "off")

    async def warm_up(self, chunks: int) -> None:
        """Run ``chunks`` chunks of a throwaway session the way a served session runs them, then free it.

        The session is what a client naming only a prompt gets (the server's default size, pipeline and policy),
        so the first client's chunks reuse what the warm-up compiled, autotuned and allocated. It bypasses
        admission and metrics: it is not a session anyone asked for.
        """
        if chunks == 0:
            return
        try:
            planned = self.service.validator.plan(pb.StartSession(prompt=WARMUP_PROMPT, seed=0))
        except RequestError as error:  # e.g. a cache budget too small for one session of the default size
            raise WarmupError(f"warm-up: the server's defaults make no valid session: {error}") from error
        if planned.max_chunks is not None and chunks > planned.max_chunks:
            raise ConfigError(f"warmup_chunks ({chunks}) must be at most a session's {planned.max_chunks} chunks")
        plan = planned.plan
        log.info("warming up: %d chunks of %s at %dx%d, policy %s", chunks, plan.pipeline, plan.width, plan.height,
                 plan.policy.name)
        started = time.perf_counter()
        try:
            generation = await self.workers.denoise.run(GenerationSession, self.bundle, plan)
        except Exception as error:
            raise WarmupError(f"warm-up: opening the session failed: {type(error).__name__}: {error}") from error
        try:
            for index in range(chunks):
                chunk_started = time.perf_counter()
                try:
                    step = await self.workers.denoise.run(generation.step)
                    await self.workers.render.run(generation.decode, step)
                except Exception as error:
                    raise WarmupError(
                        f"warm-up: chunk {index} of {chunks} failed: {type(error).__name__}: {error}"
                    ) from error
                log.info("warm-up chunk %d: %.2f s", index, time.perf_counter() - chunk_started)
        finally:
            await self.workers.denoise.run(generation.close)
        log.info("warm-up done: %d chunks in %.2f s", chunks, time.perf_counter() - started)

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
        self.service.holds.release_all()
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
