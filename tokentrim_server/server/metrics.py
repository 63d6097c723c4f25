"""The server's Prometheus series (listed in docs/metrics.md).

Labels are bounded: pipeline, policy and hook names come from what is installed, reasons and stages from
fixed sets; a session id is never a label. Each :class:`ServerMetrics` owns its registry, so several
servers (tests) can live in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, start_http_server

from tokentrim_server.engine.playout import PlayoutTiming
from tokentrim_server.engine.report import ChunkReport

# From a few milliseconds (tiny models, policy decisions) to tens of seconds (a full-size chunk on a slow device).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
FPS_BUCKETS = (1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0)
# Drift severity is a mean squared latent difference; its scale depends on the model, so span decades.
# Slack: how far a stream is ahead of its viewer (negative: the viewer waited).
SLACK_BUCKETS = (-10.0, -2.5, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REALTIME_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
SEVERITY_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)

RejectReason = Literal["max_sessions", "cache_budget", "realtime", "invalid_argument", "unauthenticated", "draining"]
EndReason = Literal[
    "completed", "stopped", "length_limit", "cancelled", "error", "shutdown", "idle_timeout", "expired"
]
Stage = Literal["queue_wait", "denoise", "decode", "encode", "prompt_change"]

REJECT_REASONS: tuple[RejectReason, ...] = (
    "max_sessions", "cache_budget", "realtime", "invalid_argument", "unauthenticated", "draining",
)
END_REASONS: tuple[EndReason, ...] = (
    "completed", "stopped", "length_limit", "cancelled", "error", "shutdown", "idle_timeout", "expired",
)
RESUME_RESULTS = ("resumed", "not_found", "replay_gap")
STAGES: tuple[Stage, ...] = ("queue_wait", "denoise", "decode", "encode", "prompt_change")


class ServerMetrics:
    """Every series the server exports, on a private registry."""

    def __init__(self, max_sessions: int, cache_budget_bytes: int, model: str, version: str) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        Gauge("tokentrim_build_info", "Server version and model (always 1)", ["version", "model"],
              registry=registry).labels(version, model).set(1)
        self.sessions_active = Gauge("tokentrim_sessions_active", "Sessions running now", registry=registry)
        self.sessions_held = Gauge(
            "tokentrim_sessions_held", "Sessions whose call dropped, held for a resume", registry=registry
        )
        self.resumes = Counter(
            "tokentrim_session_resumes_total", "Resume attempts, by outcome (reason)", ["reason"], registry=registry
        )
        Gauge("tokentrim_sessions_max", "Sessions that may run at once", registry=registry).set(max_sessions)
        self.sessions_started = Counter(
            "tokentrim_sessions_started_total", "Sessions admitted", ["pipeline", "policy"], registry=registry
        )
        self.sessions_rejected = Counter(
            "tokentrim_sessions_rejected_total", "Sessions refused before they started", ["reason"], registry=registry
        )
        self.sessions_ended = Counter(
            "tokentrim_sessions_ended_total", "Sessions ended, by reason", ["reason"], registry=registry
        )
        self.chunks = Counter("tokentrim_chunks_total", "Chunks generated", ["pipeline", "policy"], registry=registry)
        self.frames = Counter("tokentrim_frames_total", "Video frames generated", ["pipeline"], registry=registry)
        self.chunk_latency = Histogram(
            "tokentrim_chunk_latency_seconds",
            "A chunk's wall time from when it could start (credit granted) until its frames were encoded",
            ["pipeline"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_seconds = Histogram(
            "tokentrim_chunk_stage_seconds", "A chunk's wall time by stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.time_to_first_frame = Histogram(
            "tokentrim_time_to_first_frame_seconds",
            "From session admission until the first chunk's frames were encoded (session hooks included)",
            ["pipeline"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.session_fps = Histogram(
            "tokentrim_session_frames_per_second",
            "Per-session generation rate, observed at every chunk: the chunk's frames over its latency",
            ["pipeline"], buckets=FPS_BUCKETS, registry=registry,
        )
        self.chunk_slack = Histogram(
            "tokentrim_chunk_slack_seconds",
            "A chunk's playout slack when delivered: its first frame's due time at the session's simulated viewer "
            "minus its arrival (negative: the viewer stalled)", ["pipeline"], buckets=SLACK_BUCKETS, registry=registry,
        )
        self.deadline_misses = Counter(
            "tokentrim_chunk_deadline_misses_total",
            "Chunks delivered after their frame's time on the session's fixed playout clock", ["pipeline"],
            registry=registry,
        )
        self.viewer_stalls = Counter(
            "tokentrim_viewer_stalls_total", "Stalls (rebuffering) of the sessions' simulated viewers", ["pipeline"],
            registry=registry,
        )
        self.viewer_stall_seconds = Counter(
            "tokentrim_viewer_stall_seconds_total", "Seconds the sessions' simulated viewers stalled", ["pipeline"],
            registry=registry,
        )
        self.realtime_factor = Histogram(
            "tokentrim_session_realtime_factor",
            "Per session, when it ends: seconds of video delivered per second it ran (>= 1: real time)",
            ["pipeline"], buckets=REALTIME_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "tokentrim_scheduler_batch_size", "Sessions stepped together in the batched step that made a chunk",
            buckets=BATCH_BUCKETS, registry=registry,
        )
        self.queue_depth = Gauge(
            "tokentrim_scheduler_queue_depth", "Chunk steps waiting for the device (sessions with credit)",
            registry=registry,
        )
        self.prompt_changes = Counter(
            "tokentrim_prompt_changes_total", "Prompt changes applied at a chunk boundary", registry=registry
        )
        self.policy_inspected = Counter(
            "tokentrim_policy_chunks_inspected_total", "Chunks a cache policy inspected", ["policy"], registry=registry
        )
        self.policy_triggers = Counter(
            "tokentrim_policy_triggers_total", "Chunks on which a cache policy triggered a prune", ["policy"],
            registry=registry,
        )
        self.policy_tokens_removed = Counter(
            "tokentrim_policy_tokens_removed_total", "KV-cache tokens removed by a cache policy", ["policy"],
            registry=registry,
        )
        self.policy_regenerations = Counter(
            "tokentrim_policy_regenerations_total", "Chunk regenerations after a prune", ["policy"], registry=registry
        )
        self.policy_severity = Histogram(
            "tokentrim_policy_drift_severity", "Drift severity of inspected chunks", ["policy"],
            buckets=SEVERITY_BUCKETS, registry=registry,
        )
        self.policy_seconds = Histogram(
            "tokentrim_policy_seconds", "A cache policy's time on one chunk", ["policy"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.hook_seconds = Histogram(
            "tokentrim_hook_seconds", "A session hook's time at session start", ["hook"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.hook_values = Summary(
            "tokentrim_hook_value", "Figures session hooks report (e.g. FlowMo's loss_before, loss_after)",
            ["hook", "value"], registry=registry,
        )
        self.cache_bytes = Gauge(
            "tokentrim_kv_cache_bytes", "KV-cache memory allocated by running sessions", registry=registry
        )
        self.cache_reserved = Gauge(
            "tokentrim_kv_cache_reserved_bytes", "KV-cache memory reserved by admitted sessions", registry=registry
        )
        Gauge("tokentrim_kv_cache_budget_bytes", "KV-cache memory all sessions may reserve",
              registry=registry).set(cache_budget_bytes)
        for reason in REJECT_REASONS:  # export zeros, so rates and alerts see the series from the start
            self.sessions_rejected.labels(reason)
        for end in END_REASONS:
            self.sessions_ended.labels(end)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for result in RESUME_RESULTS:
            self.resumes.labels(result)
        self._http: tuple[object, threading.Thread] | None = None

    def declare_plugins(self, policies: Iterable[str], pipelines: Iterable[str]) -> None:
        """Create the labelled series of every installed policy and pipeline at zero."""
        pipelines = list(pipelines)
        for policy in policies:
            for child in (self.policy_inspected, self.policy_triggers, self.policy_tokens_removed,
                          self.policy_regenerations):
                child.labels(policy)
            for pipeline in pipelines:
                self.chunks.labels(pipeline, policy)
        for pipeline in pipelines:
            for child in (self.frames, self.deadline_misses, self.viewer_stalls, self.viewer_stall_seconds):
                child.labels(pipeline)

    def observe_chunk(self, pipeline: str, policy: str, frames: int, stages: dict[Stage, float],
                      report: ChunkReport) -> None:
        latency = sum(stages.values())
        self.chunks.labels(pipeline, policy).inc()
        self.frames.labels(pipeline).inc(frames)
        self.chunk_latency.labels(pipeline).observe(latency)
        if latency > 0:
            self.session_fps.labels(pipeline).observe(frames / latency)
        for stage, seconds in stages.items():
            self.stage_seconds.labels(stage).observe(seconds)
        if report.severity is not None:
            self.policy_inspected.labels(policy).inc()
            self.policy_severity.labels(policy).observe(report.severity)
        if report.triggered:
            self.policy_triggers.labels(policy).inc()
        self.policy_tokens_removed.labels(policy).inc(report.tokens_removed)
        self.policy_regenerations.labels(policy).inc(report.regenerations)
        self.policy_seconds.labels(policy).observe(report.policy_seconds)

    def observe_playout(self, pipeline: str, timing: PlayoutTiming, batch_size: int) -> None:
        """A delivered chunk as the session's simulated viewer saw it, and the step that made it."""
        self.chunk_slack.labels(pipeline).observe(timing.slack_seconds)
        self.batch_size.observe(batch_size)
        if timing.deadline_missed:
            self.deadline_misses.labels(pipeline).inc()
        if timing.stall_seconds > 0:
            self.viewer_stalls.labels(pipeline).inc()
            self.viewer_stall_seconds.labels(pipeline).inc(timing.stall_seconds)

    def observe_hook(self, hook: str, seconds: float, values: dict[str, float]) -> None:
        self.hook_seconds.labels(hook).observe(seconds)
        for name, value in values.items():
            self.hook_values.labels(hook, name).observe(value)

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Expose the registry over HTTP on its own port; returns the bound port (``0`` picks a free one)."""
        server, thread = start_http_server(port, address, registry=self.registry)
        self._http = (server, thread)
        return server.server_port  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            thread.join(timeout=5)
            self._http = None
