"""The Kubernetes manifests: validated offline against the schemas of Kubernetes' own kinds (kubernetes-validate,
strict: unknown fields fail) and of the Prometheus Operator's and KEDA's custom resources (bundled under schemas/),
then the cross-references no schema sees: ports, names, selectors, the drain and the server's own configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DEPLOY,
    DOCKERFILE,
    KUBERNETES,
    KUSTOMIZATION,
    SCHEMAS,
    SERVER_TOML,
    load_yaml,
    manifest,
    manifests,
    python_tool,
    server_toml,
)

CUSTOM_RESOURCE_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject_v1alpha1.json",
}
# The oldest Kubernetes the manifests target (native gRPC probes are GA since 1.27) and the newest the validator has.
KUBERNETES_VERSIONS = ("1.29.0", "latest")
# After drain_seconds the server still finishes the chunk in progress and stops its gRPC server (5 s grace).
EXIT_MARGIN_SECONDS = 10

BUILTIN = [(path, doc) for path, doc in manifests() if (doc["apiVersion"], doc["kind"]) not in CUSTOM_RESOURCE_SCHEMAS]
CUSTOM = [(path, doc) for path, doc in manifests() if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCE_SCHEMAS]


def object_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", BUILTIN, ids=object_id)
def test_validates_against_the_kubernetes_schema(item: tuple[Path, dict[str, Any]], version: str) -> None:
    validator = python_tool("kubernetes_validate", "kubernetes-validate")
    version = validator.latest_version() if version == "latest" else version
    try:
        validator.validate(item[1], version, strict=True)
    except validator.ValidationError as error:  # its str() is the whole schema; say where and what instead
        pytest.fail(f"{'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("item", CUSTOM, ids=object_id)
def test_validates_against_the_custom_resource_schema(item: tuple[Path, dict[str, Any]]) -> None:
    jsonschema = python_tool("jsonschema", "kubernetes-validate")  # which brings jsonschema
    doc = item[1]
    schema = json.loads((SCHEMAS / CUSTOM_RESOURCE_SCHEMAS[doc["apiVersion"], doc["kind"]]).read_text())
    errors = [f"{'.'.join(map(str, error.path))}: {error.message}"
              for error in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert not errors


def test_kustomization_lists_every_manifest_and_file() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    listed = {DEPLOY / resource for resource in kustomization["resources"]}
    assert listed == set(KUBERNETES.glob("*.yaml"))
    for generator in kustomization["configMapGenerator"]:
        assert all((DEPLOY / file).is_file() for file in generator["files"]), generator["name"]


# --- the Deployment ------------------------------------------------------------------------------------------------


def pod() -> dict[str, Any]:
    return manifest("Deployment")["spec"]["template"]


def container() -> dict[str, Any]:
    (server,) = pod()["spec"]["containers"]
    return server


def container_port(name: str) -> int:
    (port,) = [port["containerPort"] for port in container()["ports"] if port["name"] == name]
    return port


def test_termination_grace_outlasts_the_drain() -> None:
    grace = pod()["spec"]["terminationGracePeriodSeconds"]
    assert grace >= server_toml()["drain_seconds"] + EXIT_MARGIN_SECONDS


def test_probes_ask_the_grpc_health_service_on_the_listen_port() -> None:
    (listen,) = server_toml()["listen"]
    assert int(listen.rsplit(":", 1)[1]) == container_port("grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == container_port("grpc"), probe
    # Readiness asks for the streaming service itself, which the server reports NOT_SERVING while it drains.
    streaming = pytest.importorskip("tokentrim.v1.streaming_pb2", reason="tokentrim-proto is not installed")
    service = streaming.DESCRIPTOR.services_by_name["StreamingService"].full_name
    assert container()["readinessProbe"]["grpc"]["service"] == service


def test_metrics_port_is_the_servers() -> None:
    assert server_toml()["metrics_port"] == container_port("metrics")


def test_gets_a_gpu_and_runs_as_the_images_user() -> None:
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    (user,) = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    security = pod()["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == int(user)
    assert container()["securityContext"]["readOnlyRootFilesystem"]


def test_models_are_mounted_read_only() -> None:
    (models,) = [mount for mount in container()["volumeMounts"] if mount["mountPath"] == "/models"]
    assert models["readOnly"]
    (volume,) = [volume for volume in pod()["spec"]["volumes"] if volume["name"] == models["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"]
    assert Path(server_toml()["model"]).is_relative_to("/models")


def test_configuration_file_is_the_generated_config_map() -> None:
    environment = {variable["name"]: variable.get("value") for variable in container()["env"]}
    config_path = Path(environment["TOKENTRIM_CONFIG"])
    (mount,) = [mount for mount in container()["volumeMounts"] if mount["mountPath"] == str(config_path.parent)]
    (volume,) = [volume for volume in pod()["spec"]["volumes"] if volume["name"] == mount["name"]]
    generators = {generator["name"]: generator for generator in load_yaml(KUSTOMIZATION)["configMapGenerator"]}
    files = [Path(file).name for file in generators[volume["configMap"]["name"]]["files"]]
    assert files == [config_path.name] == [SERVER_TOML.name]


def test_the_server_accepts_its_configuration_file() -> None:
    config = pytest.importorskip("tokentrim_server.server.config", reason="the server is not there yet")
    loaded = config.load_config(["--config", str(SERVER_TOML)], environ={})
    assert loaded.drain_seconds == server_toml()["drain_seconds"]


# --- Service, ServiceMonitor, PodDisruptionBudget, ScaledObject ----------------------------------------------------


def selects_pods(selector: dict[str, str]) -> bool:
    return selector.items() <= pod()["metadata"]["labels"].items()


def test_service_is_headless_and_selects_the_pods() -> None:
    service = manifest("Service")["spec"]
    assert service["clusterIP"] == "None", "per-stream balancing needs the pods' addresses (docs/deploy.md)"
    assert selects_pods(service["selector"])
    container_ports = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["ports"]} <= container_ports


def test_service_monitor_scrapes_the_metrics_port() -> None:
    monitor = manifest("ServiceMonitor")["spec"]
    service = manifest("Service")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    (port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    assert port["targetPort"] == "metrics"


def test_disruption_budget_covers_the_pods() -> None:
    assert selects_pods(manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])


def test_autoscaler_scales_the_deployment_on_session_utilisation() -> None:
    scaled = manifest("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == manifest("Deployment")["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    assert 0 < float(trigger["metadata"]["threshold"]) < 1
    query = trigger["metadata"]["query"]
    assert "tokentrim_sessions_active" in query and "tokentrim_sessions_max" in query
    # The ServiceMonitor's job label is the Service's name; the namespace is the kustomization's.
    assert f'job="{manifest("Service")["metadata"]["name"]}"' in query
    assert f'namespace="{load_yaml(KUSTOMIZATION)["namespace"]}"' in query
