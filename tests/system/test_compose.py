"""docker-compose.yml, the Dockerfile and examples/prometheus.yml: checked structurally with a YAML
parser always, and with ``docker compose config -q`` when the docker CLI has the compose plugin."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to check docker-compose.yml (dev dependency)")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REPLICAS = ("router-1", "router-2")
INSTANCES = ("instance-1", "instance-2")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    services: dict[str, Any] = load(COMPOSE)["services"]
    return services


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return docker if probe.returncode == 0 else None


def test_docker_compose_config_is_valid() -> None:
    docker = _compose_plugin()
    if docker is None:
        pytest.skip("the docker CLI with the compose plugin is not installed (the YAML is checked structurally)")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()


CLUSTER_PROFILE = {"redis-c1", "redis-c2", "redis-c3", "cluster-init", "router-cluster"}


def test_services_present(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", *REPLICAS, *INSTANCES, "prometheus", *CLUSTER_PROFILE}


def test_redis_has_a_healthcheck(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["ports"] == ["6379:6379"]


@pytest.mark.parametrize(("name", "host_port"), [("router-1", "8001"), ("router-2", "8002")])
def test_router_replicas(services: dict[str, Any], name: str, host_port: str) -> None:
    svc = services[name]
    assert svc["build"] == "."
    assert svc["command"] == ["serve"]
    assert svc["ports"] == [f"{host_port}:8000"]
    assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
    env = svc["environment"]
    assert env["RESOURCE_ROUTER_REDIS_URL"] == "redis://redis:6379/0"
    assert env["RESOURCE_ROUTER_HOST"] == "0.0.0.0"
    assert env["RESOURCE_ROUTER_PORT"] == "8000"
    assert env["RESOURCE_ROUTER_NAMESPACE"] == services["instance-1"]["environment"]["RESOURCE_ROUTER_NAMESPACE"]
    # docker stop must wait longer than the replica's drain (30 s by default)
    assert svc["stop_grace_period"] == "35s"


def test_replicas_are_interchangeable(services: dict[str, Any]) -> None:
    a, b = (dict(services[n]) for n in REPLICAS)
    a.pop("ports")
    b.pop("ports")
    assert a == b  # stateless: same image, same settings, only the published port differs


@pytest.mark.parametrize(
    ("name", "instance_id", "resources"),
    [("instance-1", "echo-1", "user-1,user-2,user-3"), ("instance-2", "echo-2", "user-4,user-5,user-6")],
)
def test_example_instances(services: dict[str, Any], name: str, instance_id: str, resources: str) -> None:
    svc = services[name]
    assert svc["entrypoint"] == ["python", "examples/echo_instance.py"]
    assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert svc["healthcheck"] == {"disable": True}
    env = svc["environment"]
    assert env["RESOURCE_ROUTER_REDIS_URL"] == "redis://redis:6379/0"
    assert (env["ECHO_SERVICE"], env["ECHO_INSTANCE_ID"], env["ECHO_RESOURCES"]) == ("echo", instance_id, resources)
    assert "ports" not in svc  # instances only talk to Redis


def test_instance_resources_do_not_overlap(services: dict[str, Any]) -> None:
    owned = [set(services[n]["environment"]["ECHO_RESOURCES"].split(",")) for n in INSTANCES]
    assert not owned[0] & owned[1]


def test_prometheus_scrapes_both_replicas(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    assert prom["volumes"] == ["./examples/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    assert prom["ports"] == ["9090:9090"]
    assert set(prom["depends_on"]) == set(REPLICAS)
    config = load(ROOT / "examples" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (static,) = job["static_configs"]
    assert static["targets"] == [f"{n}:8000" for n in REPLICAS]


def test_files_the_compose_file_refers_to_exist() -> None:
    assert (ROOT / "Dockerfile").is_file()
    assert (ROOT / "examples" / "echo_instance.py").is_file()
    assert (ROOT / "examples" / "prometheus.yml").is_file()


def test_dockerfile_installs_the_gateway_and_nats_extras_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0].startswith("#")
    assert sum(1 for line in lines if line.startswith("FROM ${PYTHON_IMAGE}")) == 2
    assert '/opt/venv/bin/pip install --constraint docker/constraints.txt ".[gateway,nats]"' in text
    for copied in (
        "COPY pyproject.toml README.md LICENSE ./",
        "COPY docker/constraints.txt ./docker/constraints.txt",
        "COPY src ./src",
        "COPY lua ./lua",
        "COPY examples ./examples",
    ):
        assert copied in lines
    assert 'ENTRYPOINT ["resource-router"]' in lines
    assert 'CMD ["serve"]' in lines
    assert "EXPOSE 8000" in lines
    assert "USER router" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)


# -- reproducible images -----------------------------------------------------------------------------

PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


def test_the_dockerfile_pins_its_base_image() -> None:
    (arg,) = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ARG PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert PINNED_TAG.match(image), image
    assert image.startswith("python:3.11.")


def test_compose_images_are_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if "build" in svc:
            continue  # the project's own image, built from the Dockerfile
        assert PINNED_TAG.match(svc["image"]), (name, svc["image"])


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_installs_pinned_dependencies_and_no_fakeredis() -> None:
    lines = [line for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines() if line[:1].isalnum()]
    pins = {_name(line): line.split("==", 1)[1] for line in lines}
    assert all("==" in line for line in lines)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["gateway"] + extras["nats"]}
    assert wanted <= set(pins), wanted - set(pins)
    (redis_req,) = [r for r in project["dependencies"] if _name(r) == "redis"]
    assert Requirement(redis_req).specifier.contains(pins["redis"])  # within the range users get
    assert not {"fakeredis", "lupa"} & set(pins)  # the image holds no embedded store


def test_the_cluster_profile_is_optional_and_routes_over_a_cluster_url(services: dict[str, Any]) -> None:
    cluster = {name for name, svc in services.items() if "cluster" in svc.get("profiles", [])}
    assert cluster == CLUSTER_PROFILE
    for name in ("redis-c1", "redis-c2", "redis-c3"):
        assert "--cluster-enabled" in services[name]["command"]
    router = services["router-cluster"]
    assert router["environment"]["RESOURCE_ROUTER_REDIS_URL"].startswith("redis+cluster://redis-c1:7001,")
    assert router["depends_on"] == {"cluster-init": {"condition": "service_completed_successfully"}}
    for name, svc in services.items():  # the default profile never waits for the cluster
        if name not in cluster:
            assert not set(svc.get("depends_on", {})) & cluster, name
