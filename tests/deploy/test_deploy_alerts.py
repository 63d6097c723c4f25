"""The Prometheus configuration and alert rules: promtool's checks and unit tests, the PrometheusRule copy, and
what an on-call reader needs in every alert."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from deploy_support import (
    ALERT_TESTS,
    ALERTS,
    DEPLOY,
    PROMETHEUS_CONFIG,
    alert_queries,
    alert_rules,
    manifest,
    panels,
    run_tool,
    series_problems,
    tool,
)

# The issue's list: latency over the real-time budget, frames per second under real time, sessions rejected,
# prune rate unusually high, cache memory near its budget.
REQUIRED_ALERTS = {
    "TokentrimChunkLatencyOverBudget",
    "TokentrimFramesPerSecondBelowRealTime",
    "TokentrimSessionsRejected",
    "TokentrimPruneRateHigh",
    "TokentrimKvCacheNearBudget",
    "TokentrimViewersStalling",
}


def test_promtool_check_rules() -> None:
    run_tool(tool("promtool"), "check", "rules", ALERTS)


def test_promtool_check_rules_of_the_prometheusrule(tmp_path) -> None:
    rules = tmp_path / "prometheusrule-groups.yml"
    rules.write_text(yaml.safe_dump({"groups": manifest("PrometheusRule")["spec"]["groups"]}))
    run_tool(tool("promtool"), "check", "rules", rules)


def test_promtool_unit_tests_of_the_alerts() -> None:
    run_tool(tool("promtool"), "test", "rules", ALERT_TESTS)


def test_promtool_check_config() -> None:
    run_tool(tool("promtool"), "check", "config", PROMETHEUS_CONFIG)


def test_prometheusrule_is_rendered_from_the_alert_rules() -> None:
    script = DEPLOY / "ci" / "render_prometheusrule.py"
    result = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_issue_alerts_exist() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_runbook(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert {"summary", "description", "runbook"} <= set(rule["annotations"])
    assert rule.get("for"), "without `for`, one bad evaluation pages someone"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_runbook_names_real_dashboard_panels(rule: dict) -> None:
    titles = {panel["title"] for panel in panels()}
    quoted = re.findall(r'"([^"]+)"', rule["annotations"]["runbook"])
    assert set(quoted) <= titles, f"no dashboard panel named {sorted(set(quoted) - titles)}"


@pytest.mark.parametrize("query", alert_queries(), ids=lambda query: query.where)
def test_alert_uses_exported_series(query) -> None:
    assert not series_problems(query.expr)


def test_latency_budget_is_a_bucket_bound() -> None:
    """The latency alert counts chunks in the 0.75 s bucket, exact only while 0.75 is a bound of the histogram.
    0.75 s is a 12-frame chunk at 16 frames/s."""
    metrics = pytest.importorskip("tokentrim_server.server.metrics")
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "TokentrimChunkLatencyOverBudget"]
    (bound,) = re.findall(r'le="([^"]+)"', rule["expr"])
    assert float(bound) == 12 / 16
    assert float(bound) in metrics.LATENCY_BUCKETS
