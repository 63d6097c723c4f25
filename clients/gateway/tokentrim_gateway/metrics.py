"""The gateway's Prometheus series, on a registry of its own (docs/gateway.md lists them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.viewers = Gauge("tokentrim_gateway_viewers", "Browsers connected over WebRTC", registry=self.registry)
        self.sessions_active = Gauge("tokentrim_gateway_sessions_active",
                                     "Server sessions the gateway is relaying", registry=self.registry)
        self.sessions_ended = Counter(
            "tokentrim_gateway_sessions_ended", "Relayed sessions by how they ended: completed, stopped, "
            "length_limit, cancelled (viewer left or replaced the session), error", ["reason"],
            registry=self.registry)
        self.frames_sent = Counter("tokentrim_gateway_frames_sent", "Video frames handed to the viewers' tracks",
                                   registry=self.registry)
        self.frames_dropped = Counter(
            "tokentrim_gateway_frames_dropped", "Frames never shown: late (the sender fell more than a frame "
            "behind the session's frame rate), discarded (still buffered when a viewer left or cancelled)",
            ["reason"], registry=self.registry)
        self.stalls = Counter("tokentrim_gateway_playout_stalls",
                              "Times a playout buffer ran empty mid-session (the server fell behind real time)",
                              registry=self.registry)
        for reason in ("completed", "stopped", "length_limit", "cancelled", "error"):
            self.sessions_ended.labels(reason)
        for reason in ("late", "discarded"):
            self.frames_dropped.labels(reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
