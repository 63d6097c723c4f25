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
from tokentrim_server.engine.driver import ReplayGap, SessionIdle, SessionShutdown, Workers
from tokentrim_server.hooks import describe_hooks
from tokentrim_server.loading.model import ModelBundle
from tokentrim_server.pipelines.registry import PIPELINES, options_schema, pipeline_options
from tokentrim_server.policies import describe_policies
from tokentrim_server.server.decoding import Undecodable
from tokentrim_server.server.errors import log_fault
from tokentrim_server.server.holds import HeldSessions, caller_identity, new_resume_token
from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.requests import RequestError, RequestValidator, options_as_dict
from tokentrim_server.server.session import VIDEO_FPS, ServedSession

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_SECONDS = 30.0
SETTLE_SECONDS = 0.1  # a cancelled call's last messages (a stop) reach the reader within this


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
        self.holds = HeldSessions(self.config.resume_hold_seconds, metrics)
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
        first = await self._first_message(request_iterator, context)
        identity = caller_identity(context)
        if first.WhichOneof("request") == "resume":
            session, after = await self._resume(first.resume, identity, context)
            serving = self._serve(session, request_iterator, context, identity, after=after, resumed=True)
        else:
            session = await self._admit(first.start, context)
            serving = self._serve(session, request_iterator, context, identity)
        async for response in serving:
            yield response

    async def _admit(self, start: pb.StartSession, context: grpc.aio.ServicerContext) -> ServedSession:
        """Validate and admit a new session (the call ends with the reason when it cannot start)."""
        try:
            planned = self.validator.plan(start)
        except RequestError as error:
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            reservation = self.admission.admit(planned.cache_bytes)
        except AdmissionError as error:
            await self._reject(context, error.limit, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return ServedSession(
            uuid.uuid4().hex, planned, reservation, self.workers, self.admission, self.metrics, self.validator,
            on_released=self._update_reserved, resume_token=new_resume_token() if self.holds.enabled else "",
        )

    async def _resume(
        self, resume: pb.ResumeSession, identity: str, context: grpc.aio.ServicerContext
    ) -> tuple[ServedSession, int | None]:
        """Take a held session back (the call ends with NOT_FOUND when there is none for this caller)."""
        if resume.initial_credits > self.config.max_credits:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"resume.initial_credits: must be at most "
                                f"{self.config.max_credits} (0: {self.config.default_credits})")
        session = await self.holds.take(resume.token, identity)
        if session is None:
            self.metrics.resumes.labels("not_found").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, "resume.token: no held session with this token for these "
                                "credentials (it expired, ended, or was never issued)")
        after = resume.last_chunk_index if resume.HasField("last_chunk_index") else None
        try:
            session.driver.check_replay(after)
        except ReplayGap as error:  # those chunks are gone for good: the session cannot continue for this client
            self.metrics.resumes.labels("replay_gap").inc()
            self.metrics.sessions_ended.labels("error").inc()
            session.finish()
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"resume.last_chunk_index: {error}")
        self.metrics.resumes.labels("resumed").inc()
        session.resume(resume.initial_credits or self.config.default_credits)
        log.info("session %s resumed after chunk %s", session.session_id, "none" if after is None else after)
        return session, after

    async def _serve(
        self,
        session: ServedSession,
        requests: AsyncIterator[pb.GenerateRequest],
        context: grpc.aio.ServicerContext,
        identity: str,
        after: int | None = None,
        resumed: bool = False,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Run ``session`` on this call; a call that drops leaves it held when it can be resumed."""
        self._track(session)
        self.holds.attach(session, identity)
        held = False
        try:
            if not resumed:
                try:
                    await session.open(self.bundle)
                except ValueError as error:  # a policy or hook refusing the session says why (their documented way)
                    self.metrics.sessions_rejected.labels("invalid_argument").inc()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session: {error}")
                plan = session.plan
                self.metrics.sessions_started.labels(plan.pipeline, session.policy_name).inc()
                log.info("session %s started: %s, %s, policy %s", session.session_id, plan.pipeline,
                         f"{plan.width}x{plan.height}", session.policy_name)
            yield session.started_message(self.model_name, VIDEO_FPS, resumed=resumed)
            async for response in session.responses(requests, after):
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
        except (asyncio.CancelledError, GeneratorExit) as ending:
            # The client went away, its deadline passed, or a resume took over (cancelled); or grpc gave up on
            # a dead connection while sending (it closes this generator).
            if not session.taken_over:
                with contextlib.suppress(asyncio.CancelledError):  # a resume taking over cancels again: decide now
                    await session.settle(SETTLE_SECONDS)
            held = session.resumable and not self.draining
            if not held:
                self.metrics.sessions_ended.labels("cancelled").inc()
            elif session.taken_over and isinstance(ending, asyncio.CancelledError):
                session.taken_over = False  # tell the old call, should its client still be listening
                await context.abort(grpc.StatusCode.ABORTED, "the session was resumed by another call")
            raise
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            self.metrics.sessions_ended.labels("error").inc()
            await context.abort(grpc.StatusCode.INTERNAL, log_fault(log, f"session {session.session_id} failed"))
        finally:
            self._untrack(session)
            self.holds.detach(session)
            if held:
                self.holds.hold(session, identity)
            else:
                session.finish()
                log.info("session %s ended after %d chunks", session.session_id, session.chunks_sent)

    # ------------------------------------------------------------------ draining
    async def drain(self, grace_seconds: float) -> None:
        """Refuse new sessions, give running ones ``grace_seconds``, then end them with UNAVAILABLE."""
        self.draining = True
        self.holds.release_all()  # nobody can resume them on a process that is going away
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
            idle_timeout_seconds=config.idle_timeout_seconds, resume_hold_seconds=config.resume_hold_seconds,
            replay_chunks=config.max_credits if config.resume_hold_seconds > 0 else 0,
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
    ) -> pb.GenerateRequest:
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
        if first.WhichOneof("request") not in ("start", "resume"):
            await self._reject(context, "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT,
                               "start: the first message of a session must be start (or resume)")
        return first

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
