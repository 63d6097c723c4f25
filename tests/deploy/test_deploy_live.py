"""Against a running server: the health checks the container and Kubernetes rely on, promtool's lint of a live
scrape, and a real Prometheus scraping it, through whose HTTP API every dashboard, alert and autoscaler expression
evaluates and the core series and panels return data."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import yaml
from deploy_live import (
    SESSION_CHUNKS,
    LiveServer,
    PrometheusApi,
    free_port,
    http_get,
    responds,
    rules,
    running,
    timestamp,
)
from deploy_support import (
    ALERTS,
    PIP_HINT,
    PROMETHEUS_CONFIG,
    all_queries,
    exported_series,
    for_prometheus,
    load_yaml,
    manifest,
    panels,
    run_tool,
    tool,
)

# Series every session moves; the rest (hook figures, rejections, regenerations) may rightly have nothing yet.
CORE_SERIES = (
    "tokentrim_build_info",
    "tokentrim_sessions_active",
    "tokentrim_sessions_max",
    "tokentrim_sessions_started_total",
    "tokentrim_sessions_ended_total",
    "tokentrim_chunks_total",
    "tokentrim_frames_total",
    "tokentrim_chunk_latency_seconds_bucket",
    "tokentrim_chunk_stage_seconds_bucket",
    "tokentrim_time_to_first_frame_seconds_bucket",
    "tokentrim_session_frames_per_second_bucket",
    "tokentrim_prompt_changes_total",
    "tokentrim_policy_chunks_inspected_total",
    "tokentrim_policy_seconds_bucket",
    "tokentrim_kv_cache_bytes",
    "tokentrim_kv_cache_reserved_bytes",
    "tokentrim_kv_cache_budget_bytes",
)
# Panels that must show a number after two sessions, the at-a-glance set.
CORE_PANELS = (
    "Sessions active",
    "Session utilisation",
    "Frames per second",
    "Chunk latency p95",
    "Replicas by version and model",
    "Sessions active and limit",
    "Sessions started /s",
    "Frames per second in total",
    "Frames per second per session",
    "Chunk latency",
    "Time to first frame",
    "Chunk time by stage (mean)",
    "Policy time per chunk (p95)",
    "KV-cache memory against budget",
)


# The fixtures live here, not in a conftest.py: tests/conftest.py is imported by name (`from conftest import ...`),
# and a second conftest module would shadow it.


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``python -m tokentrim_server.server --model tiny`` on free ports, after one session."""
    pytest.importorskip("tokentrim_server.server.app", reason="the server (tokentrim_server.server) is not there yet")
    client = tool("tokentrim-client", PIP_HINT.format(package="-e clients/python"))
    server = LiveServer(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", client)
    metrics_host, metrics_port = server.metrics_address.split(":")
    # The developer's own TOKENTRIM_* settings (a config file, tokens) must not change the server under test.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENTRIM_")}
    command = [sys.executable, "-m", "tokentrim_server.server", "--model", "tiny", "--device", "cpu",
               "--listen", server.target, "--metrics-address", metrics_host, "--metrics-port", metrics_port]
    with running(command, tmp_path_factory.mktemp("server"), environment) as process:
        process.wait_until(lambda: responds(server.metrics_url), "the server's /metrics")
        server.run_session()
        yield server


@pytest.fixture(scope="module")
def prometheus(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusApi]:
    """Debian's Prometheus with deploy/prometheus/prometheus.yml (scraping and evaluating every second, target the
    live server) and the alert rules, once two sessions' series and a rule evaluation over them are in."""
    binary = tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [live_server.metrics_address]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    command = [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
               f"--web.listen-address={address}", "--log.level=warn"]
    api = PrometheusApi(f"http://{address}")
    with running(command, folder) as process:
        process.wait_until(lambda: responds(f"{api.url}/-/ready"), "Prometheus to be ready")
        # A series born between two scrapes starts at its final value and its rate stays 0: scrape the first
        # session, run a second one, and wait for a scrape of that, so every rate and quantile has an increase.
        process.wait_until(lambda: api.value("sum(tokentrim_chunks_total)") >= SESSION_CHUNKS,
                           "the first session's series in Prometheus", timeout=30)
        live_server.run_session()
        process.wait_until(lambda: api.value("sum(tokentrim_chunks_total)") >= 2 * SESSION_CHUNKS,
                           "the second session's series in Prometheus", timeout=30)
        since = datetime.now(UTC)
        process.wait_until(lambda: all(timestamp(rule["lastEvaluation"]) > since for rule in rules(api)),
                           "a rule evaluation", timeout=30)
        yield api


def health(server: LiveServer, service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([server.client, "health", "--target", server.target, "--service", service],
                          capture_output=True, text=True, timeout=30)


def test_container_health_check_passes(live_server: LiveServer) -> None:
    """The image's HEALTHCHECK command, against a serving server."""
    result = health(live_server, "")
    assert result.returncode == 0, result.stdout + result.stderr


def test_readiness_probe_service_is_served(live_server: LiveServer) -> None:
    (server,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    result = health(live_server, server["readinessProbe"]["grpc"]["service"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics(live_server: LiveServer) -> None:
    run_tool(tool("promtool"), "check", "metrics", stdin=http_get(live_server.metrics_url))


def test_scrape_holds_only_declared_series(live_server: LiveServer) -> None:
    exported = set(exported_series())
    scraped = set(re.findall(r"^(tokentrim_\w+)", http_get(live_server.metrics_url), flags=re.MULTILINE))
    assert scraped <= exported, f"metrics.py does not declare {sorted(scraped - exported)}"


@pytest.mark.parametrize("query", all_queries(), ids=lambda query: query.where)
def test_expression_evaluates(prometheus: PrometheusApi, query) -> None:
    prometheus.query(for_prometheus(query.expr))


def test_alert_rules_evaluate_without_error(prometheus: PrometheusApi) -> None:
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules(prometheus) if rule["health"] != "ok"}
    assert not unhealthy


@pytest.mark.parametrize("series", CORE_SERIES)
def test_core_series_have_data(prometheus: PrometheusApi, series: str) -> None:
    assert prometheus.query(series), f"Prometheus has no {series}"


@pytest.mark.parametrize("title", CORE_PANELS)
def test_core_panel_shows_a_number(prometheus: PrometheusApi, title: str) -> None:
    (panel,) = [panel for panel in panels() if panel["title"] == title]
    for target in panel["targets"]:
        values = [float(sample["value"][1]) for sample in prometheus.query(for_prometheus(target["expr"]))]
        assert any(math.isfinite(value) for value in values), f"{target['refId']}: {values or 'no series'}"
