"""The ``tokentrim.v1.StreamingService`` implementation: admission, validation, sessions, server info."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import grpc
from google.protobuf.struct_pb2 import ListValue, Struct
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_server.engine.admission import Admission, AdmissionError
from tokentrim_server.engine.driver import SessionIdle, SessionShutdown, Workers
from tokentrim_server.hooks import describe_hooks
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.pipelines.registry import PIPELINES, options_schema, pipeline_options
from tokentrim_server.policies import describe_policies
from tokentrim_server.server.decoding import Undecodable
from tokentrim_server.server.errors import log_fault
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import RequestError, RequestValidator, options_as_dict
from tokentrim_server.server.session import ServedSession

log = logging.getLogger(__name__)

VIDEO_FPS = 16.0  # Wan 2.1 is trained on 16 frames per second
SHUTDOWN_WAIT_SECONDS = 30.0


class StreamingService(pb_grpc.StreamingServiceServicer):
    """Serves sessions on one loaded model, published as ``model_name`` (never the path it was loaded from).

    Register it with :func:`tokentrim_server.server.decoding.add_tolerant_service`: requests may then be
    :class:`Undecodable`, and are answered as INVALID_ARGUMENT.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        validator: RequestValidator,
        admission: Admission,
        metrics: ServerMetrics,
        workers: Workers,
        model_name: str,
    ) -> None:
        self.bundle = bundle
        self.model_name = model_name
        self.validator = validator
        self.config = validator.config
        self.admission = admission
        self.metrics = metrics
        self.workers = workers
        self.draining = False
        self.sessions: set[ServedSession] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ RPCs
    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {request.describe()}")
        return self.server_info()

    async def Generate(
        self, request_iterator: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        if self.draining:
            await self._reject(context, "draining", grpc.StatusCode.UNAVAILABLE,
                               "the server is draining for shutdown; retry on another replica")
        start = await self._first_message(request_iterator, context)
        try:
            planned = self.validator.plan(start)
        except RequestError as error:
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            reservation = self.admission.admit(planned.cache_bytes)
        except AdmissionError as error:
            await self._reject(context, error.limit, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        session = ServedSession(
            uuid.uuid4().hex, planned, reservation, self.workers, self.admission, self.metrics, self.validator,
            on_released=self._update_reserved,
        )
        self._track(session)
        try:
            try:
                await session.open(self.bundle)
            except ValueError as error:  # a policy or hook refusing the session says why (their documented way)
                self.metrics.sessions_rejected.labels("invalid_argument").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session: {error}")
            self.metrics.sessions_started.labels(planned.plan.pipeline, session.policy_name).inc()
            log.info("session %s started: %s, %s, policy %s", session.session_id, planned.plan.pipeline,
                     f"{planned.plan.width}x{planned.plan.height}", session.policy_name)
            yield session.started_message(self.model_name, VIDEO_FPS)
            async for response in session.responses(request_iterator):
                yield response
        except RequestError as error:
            self.metrics.sessions_ended.labels("error").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except SessionIdle as error:
            self.metrics.sessions_ended.labels("idle_timeout").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        except SessionShutdown as error:
            self.metrics.sessions_ended.labels("shutdown").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except asyncio.CancelledError:  # the client went away or its deadline passed
            self.metrics.sessions_ended.labels("cancelled").inc()
            raise
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            self.metrics.sessions_ended.labels("error").inc()
            await context.abort(grpc.StatusCode.INTERNAL, log_fault(log, f"session {session.session_id} failed"))
        finally:
            self._untrack(session)
            session.finish()
            log.info("session %s ended after %d chunks", session.session_id, session.chunks_sent)

    # ------------------------------------------------------------------ draining
    async def drain(self, grace_seconds: float) -> None:
        """Refuse new sessions, give running ones ``grace_seconds``, then end them with UNAVAILABLE."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        except TimeoutError:
            log.warning("drain: %d sessions still running after %.0f s; ending them", len(self.sessions),
                        grace_seconds)
            for session in list(self.sessions):
                session.control.end_by_shutdown()
            # Each ends after its chunk in progress; bound the wait in case a device call hangs.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), SHUTDOWN_WAIT_SECONDS)

    # ------------------------------------------------------------------ helpers
    def server_info(self) -> pb.GetServerInfoResponse:
        config = self.config
        pipelines = []
        for name in PIPELINES:
            options = pipeline_options(name, self.validator.default_options(name))
            pipelines.append(pb.PipelineInfo(
                name=name, default_options=_struct(options_as_dict(options)),
                options_schema=_struct(options_schema(name)),
            ))
        limits = pb.Limits(
            max_sessions=self.admission.max_sessions, cache_budget_bytes=self.admission.cache_budget_bytes,
            max_prompt_chars=config.max_prompt_chars, max_chunks=config.max_chunks, max_height=config.max_height,
            max_width=config.max_width, size_multiple=self.validator.size_multiple,
            default_credits=config.default_credits, max_credits=config.max_credits,
            max_session_hooks=config.max_session_hooks, max_message_bytes=config.max_message_bytes,
            max_denoising_steps=config.max_denoising_steps, max_hook_iterations=config.max_hook_iterations,
            idle_timeout_seconds=config.idle_timeout_seconds,
        )
        return pb.GetServerInfoResponse(
            model=self.model_name, versions=_versions(), pipelines=pipelines,
            default_pipeline=config.default_pipeline, cache_policies=_plugins(describe_policies()),
            default_cache_policy=config.default_policy, session_hooks=_plugins(describe_hooks()), limits=limits,
            frames_per_second=VIDEO_FPS, default_height=self.validator.default_height,
            default_width=self.validator.default_width,
        )

    async def _first_message(
        self, requests: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> pb.StartSession:
        try:
            first = await asyncio.wait_for(anext(aiter(requests)), self.config.start_timeout_seconds)
        except StopAsyncIteration:
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT,
                               "start: the stream closed before its start message")
        except TimeoutError:
            await self._reject(context, "invalid_argument", grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"start: no start message within {self.config.start_timeout_seconds:g} s")
        if isinstance(first, Undecodable):
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT,
                               f"request: {first.describe()}")
        if first.WhichOneof("request") != "start":
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT,
                               "start: the first message of a session must be start")
        return first.start

    async def _reject(self, context: grpc.aio.ServicerContext, reason: str, code: grpc.StatusCode, message: str):
        self.metrics.sessions_rejected.labels(reason).inc()
        await context.abort(code, message)

    def _track(self, session: ServedSession) -> None:
        self.sessions.add(session)
        self._idle.clear()
        self.metrics.sessions_active.set(len(self.sessions))
        self._update_reserved()

    def _untrack(self, session: ServedSession) -> None:
        self.sessions.discard(session)
        self.metrics.sessions_active.set(len(self.sessions))
        if not self.sessions:
            self._idle.set()

    def _update_reserved(self) -> None:
        self.metrics.cache_reserved.set(self.admission.reserved_bytes)


def _plugins(schemas: list[dict]) -> list[pb.PluginInfo]:
    plugins = []
    for schema in schemas:
        parameters = ListValue()
        parameters.extend(schema["parameters"])
        plugins.append(pb.PluginInfo(
            name=schema["name"], description=schema["description"], parameters=parameters,
            parameters_schema=_struct(schema["json_schema"]),
        ))
    return plugins


def _struct(values: dict) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


def _versions() -> dict[str, str]:
    found = {}
    for package in ("tokentrim-server", "torch", "diffusers", "transformers", "grpcio"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found
