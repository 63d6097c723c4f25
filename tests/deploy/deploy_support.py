"""Shared by the deploy tests: where things are, how they load, which series the server exports, PromQL helpers
and the external tools (skipping with an install hint where one is missing)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tokentrim.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "tokentrim.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
KUBERNETES = DEPLOY / "kubernetes"
SERVER_TOML = KUBERNETES / "tokentrim.toml"

INSTALL_TOOLS = "deploy/ci/install-tools.sh (Debian/Ubuntu: apt-get install prometheus)"
PIP_HINT = "pip install -e '.[dev]' (or pip install {package})"

# Labels Prometheus adds to every scraped series: from the scrape target (compose) and from the ServiceMonitor's
# relabelling (Kubernetes).
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "service", "container", "endpoint"})

# Grafana's built-in variables, replaced by values a running Prometheus accepts (scrapes are 1 s apart in the tests).
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


# --- files ---------------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows are only headings)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/kubernetes, with its file."""
    return [(path, doc) for path in sorted(KUBERNETES.glob("*.yaml")) for doc in load_documents(path)]


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return found


def server_toml() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(SERVER_TOML.read_text())


# --- PromQL --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (a pytest id)."""

    where: str
    expr: str


def _label_values_query(query: str) -> str:
    """Grafana's ``label_values(metric, label)`` as the PromQL selector it lists values of."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", query)
    assert match, f"unexpected variable query {query!r}"
    return match.group(1)


def dashboard_queries() -> list[Query]:
    queries = [Query(f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
               for panel in panels() for target in panel["targets"]]
    queries += [Query(f"variable {variable['name']}", _label_values_query(variable["definition"]))
                for variable in dashboard()["templating"]["list"] if variable["type"] == "query"]
    return queries


def alert_queries() -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def autoscaler_queries() -> list[Query]:
    scaled = manifest("ScaledObject")
    return [Query(f"ScaledObject trigger {index}", trigger["metadata"]["query"])
            for index, trigger in enumerate(scaled["spec"]["triggers"]) if trigger["type"] == "prometheus"]


def all_queries() -> list[Query]:
    return dashboard_queries() + alert_queries() + autoscaler_queries()


def for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced: built-ins by durations, ours by "all"."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    for variable in dashboard()["templating"]["list"]:
        expr = expr.replace(f"${variable['name']}", variable.get("allValue") or ".*")
    assert "$" not in expr, f"unreplaced variable in {expr!r}"
    return expr


METRIC = re.compile(r"\b(tokentrim_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(tokentrim_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def series_problems(expr: str) -> list[str]:
    """What is wrong with an expression's use of the server's series (empty: nothing)."""
    names = metric_names(expr)
    if not names:
        return ["it uses no tokentrim series"]
    return [f"{name} is not exported" for name in sorted(names - set(exported_series()))] + label_problems(expr)


def label_problems(expr: str) -> list[str]:
    """Labels an expression matches or groups on that none of its series carries: such a query is not an error to
    Prometheus, it silently returns nothing or one unlabelled line."""
    series = exported_series()
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if label not in series.get(name, set()) | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    known = set().union(*(series.get(name, set()) for name in metric_names(expr))) | TARGET_LABELS
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in known:
                problems.append(f"no series of {sorted(metric_names(expr))} has the label {label!r}")
    return problems


# --- the server's series -------------------------------------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}


@dataclass(frozen=True)
class Family:
    """One metric family of the server: its type, name (``tokentrim_frames`` for ``tokentrim_frames_total``),
    label names and the names of its samples."""

    kind: str
    name: str
    labels: frozenset[str]

    @property
    def samples(self) -> dict[str, frozenset[str]]:
        """Sample name -> label names (buckets add ``le``)."""
        return {self.name + suffix: self.labels | ({"le"} if suffix == "_bucket" else set())
                for suffix in _SAMPLE_SUFFIXES[self.kind]}


@cache
def families() -> tuple[Family, ...]:
    """Every family tokentrim_server/server/metrics.py exports."""
    module = pytest.importorskip("tokentrim_server.server.metrics", reason="the server package is not installed")
    metrics = module.ServerMetrics(max_sessions=1, cache_budget_bytes=1, model="tiny", version="0")
    # The registry's collectors are the metric objects themselves. Their names and label names are read from these
    # (long-stable) attributes because a labelled family without samples collects to nothing.
    return tuple(Family(collector._type, collector._name, frozenset(collector._labelnames))
                 for collector in metrics.registry._collector_to_names)


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every sample name the server exports, with its label names."""
    return {name: labels for family in families() for name, labels in family.samples.items()}


def family_of(sample: str) -> str | None:
    """The family a sample name belongs to, None for a name the server does not export."""
    return next((family.name for family in families() if sample in family.samples), None)


# --- tools ---------------------------------------------------------------------------------------------------------


def tool(name: str, hint: str = INSTALL_TOOLS) -> str:
    """The path of a command-line tool, on PATH or next to this Python (a virtual environment's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed: run {hint}")
    return found


def python_tool(module: str, package: str) -> Any:
    """A Python module of a test tool, or a skip saying how to install it."""
    return pytest.importorskip(module, reason=f"{package} is not installed: run {PIP_HINT.format(package=package)}")


def run_tool(*args: str | Path, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool; a non-zero exit fails the test with its output."""
    result = subprocess.run([str(arg) for arg in args], input=stdin, capture_output=True, text=True, timeout=timeout,
                            cwd=REPO)
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def walk(value: Any) -> Iterator[Any]:
    """Every nested value of a JSON-like document, depth first."""
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from walk(child)
