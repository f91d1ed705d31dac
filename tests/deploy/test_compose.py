"""docker-compose.yml: accepted by Compose (v2, or v1 where only that is installed), a 3-broker
KRaft cluster, scalable workers and webhook ingress; the Makefile picks v2 before v1."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE_TEST_TOKEN,
    ROOT,
    broker_hosts,
    compose_command,
    compose_config,
    compose_config_without_token,
    tool,
    topology,
    volume_specs,
)


def kafka_services() -> dict[str, dict[str, str]]:
    services = compose_config()["services"]
    return {
        name: service["environment"]
        for name, service in services.items()
        if service["image"].startswith("apache/kafka:")
    }


def test_docker_compose_accepts_the_file() -> None:
    services = compose_config()["services"]
    expected = {"redis", "dynamodb", "init", "worker", "webhooks", "simulator", "prometheus"}
    expected |= {"grafana"}
    assert expected <= set(services)


def test_every_image_is_pinned() -> None:
    for name, service in compose_config()["services"].items():
        image = service["image"]
        if image == compose_config()["services"]["worker"]["image"]:
            assert service["build"], f"{name} is built from this checkout"
            continue
        assert re.search(r":v?\d+(\.\d+)+", image), f"{name}: {image} is not pinned to a version"
        assert not image.endswith(":latest")


def test_kafka_is_three_kraft_nodes_from_the_official_image() -> None:
    brokers = kafka_services()
    assert len(brokers) == 3
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in brokers.values()}
    assert len(voters) == 1, "every node must name the same controller quorum"
    (quorum,) = voters
    assert {v.split("@")[1].split(":")[0] for v in quorum.split(",")} == set(brokers)
    assert len({env["KAFKA_NODE_ID"] for env in brokers.values()}) == 3
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1
    for env in brokers.values():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_replication_in_topics_yaml_fits_the_cluster() -> None:
    brokers = kafka_services()
    topics = topology()
    for spec in topics.all_topics("cartloom"):
        assert spec.replication_factor <= len(brokers), spec.name
    for env in brokers.values():
        min_isr = int(env["KAFKA_MIN_INSYNC_REPLICAS"])
        # acks=all keeps working with one broker down.
        assert min_isr < topics.default_replication_factor
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(brokers)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics.yaml declares topics"


def test_workers_reach_every_broker() -> None:
    env = compose_config()["services"]["worker"]["environment"]
    hosts = {h.split(":")[0] for h in broker_hosts(env["CARTLOOM_BROKER_URL"])}
    assert hosts == set(kafka_services())


def _port_range(text: str) -> set[int]:
    first, _, last = text.partition("-")
    return set(range(int(first), int(last or first) + 1)) if first else set()


def port_mappings(service: dict[str, Any]) -> list[tuple[set[int], int]]:
    """(host ports, container port) of each ``ports`` entry, in either form `config` prints:
    a mapping (Compose v2) or ``[ip:][host[-host]:]container[/proto]`` (docker-compose 1.x)."""
    mappings = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            mappings.append((_port_range(str(port.get("published", ""))), int(port["target"])))
            continue
        parts = str(port).split("/", 1)[0].split(":")
        host = parts[-2] if len(parts) >= 2 else ""
        mappings.append((_port_range(host), int(parts[-1])))
    return mappings


def host_ports(service: dict[str, Any]) -> set[int]:
    """Every host port a service may publish (the whole of a range)."""
    return {port for hosts, _ in port_mappings(service) for port in hosts}


@pytest.mark.parametrize("name", ["worker", "webhooks"])
def test_workers_and_the_ingress_can_be_scaled(name: str) -> None:
    service = compose_config()["services"][name]
    assert "container_name" not in service
    assert "hostname" not in service
    for port in service.get("ports", []):
        published = str(port.get("published", "")) if isinstance(port, dict) else str(port)
        assert "-" in published or not published, "a fixed host port would stop --scale"


def test_workers_advertise_their_own_host() -> None:
    worker = compose_config()["services"]["worker"]
    # Each replica advertises its own host name for query forwarding, never a shared one.
    assert "CARTLOOM_WEB_HOST" not in worker["environment"]
    # `config` prints `$` escaped as `$$` (the container sees one `$`).
    entrypoint = " ".join(worker["entrypoint"]).replace("$$", "$")
    assert 'CARTLOOM_WEB_HOST="$(hostname)"' in entrypoint
    assert "CARTLOOM_GROUP_INSTANCE_ID" not in worker["environment"]


def test_the_init_job_creates_topics_and_tables_before_workers_start() -> None:
    services = compose_config()["services"]
    init = services["init"]
    script = " ".join(init["entrypoint"] + init["command"])
    assert "cartloom topics apply" in script
    assert "cartloom dynamodb create-tables" in script
    for broker in kafka_services():
        assert init["depends_on"][broker]["condition"] == "service_healthy"
    assert init["depends_on"]["dynamodb"]["condition"] == "service_healthy"
    condition = services["worker"]["depends_on"]["init"]["condition"]
    assert condition == "service_completed_successfully"


def test_the_webhook_ingress_runs_the_cli_command() -> None:
    services = compose_config()["services"]
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["shopify", "ingress"]
    assert "entrypoint" not in webhooks, "the image's entry point: `cartloom`"
    assert webhooks["image"] == services["worker"]["image"]
    port = int(webhooks["environment"]["CARTLOOM_WEBHOOK_INGRESS_PORT"])
    assert {target for _, target in port_mappings(webhooks)} == {port}
    # Its own check: the image's HEALTHCHECK probes the worker's port, where nothing listens.
    check = " ".join(webhooks["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in check
    # The producer reads shopify.webhooks' partitions at start: the topics must exist.
    assert webhooks["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert webhooks["restart"] == "unless-stopped"


def test_the_sinks_can_run_apart_as_an_opt_in_service() -> None:
    services = compose_config()["services"]
    sinks = services["sinks"]
    assert sinks["command"] == ["sink", "--no-create-topics"]
    assert sinks["profiles"] == ["split-sinks"], "not started by a plain `up`"
    assert "entrypoint" not in sinks, "the image's entry point: `cartloom`"
    assert sinks["environment"] == services["worker"]["environment"]
    port = int(sinks["environment"]["CARTLOOM_SINK_PORT"])
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(sinks["healthcheck"]["test"])
    assert "ports" not in sinks, "scaled with --scale: no fixed host port"
    for store in ("redis", "dynamodb"):
        assert sinks["depends_on"][store]["condition"] == "service_healthy"
    scraped = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scraped["scrape_configs"]}
    assert jobs["cartloom-sinks"]["dns_sd_configs"][0]["port"] == port


def test_published_host_ports_do_not_collide_with_the_ingress() -> None:
    services = compose_config()["services"]
    ingress = host_ports(services["webhooks"])
    assert ingress
    for name, service in services.items():
        if name != "webhooks":
            overlap = ingress & host_ports(service)
            assert not overlap, f"webhooks and {name} both publish {sorted(overlap)}"


def test_the_simulator_runs_from_the_checkout() -> None:
    services = compose_config()["services"]
    simulator = services["simulator"]
    # The image ships CartLoom only; the simulator is the checkout's devstack, mounted.
    assert simulator["entrypoint"] == ["python", "-m", "devstack"]
    (mount,) = (spec for spec in volume_specs(simulator) if "devstack" in spec)
    source, target, mode = mount.rsplit(":", 2)
    assert Path(source).resolve() == ROOT / "devstack"
    assert (target, mode) == (f"{simulator['working_dir']}/devstack", "ro")
    command = simulator["command"]
    assert command[0] == "simulate"
    assert "--bind=0.0.0.0" in command, "reachable from the workers' containers"
    (port,) = (arg.split("=", 1)[1] for arg in command if arg.startswith("--port="))
    worker_env = services["worker"]["environment"]
    assert worker_env["CARTLOOM_SHOPIFY_API_URL"] == f"http://simulator:{port}"
    # Shopify's webhook address is the ingress, as in production.
    (target,) = (arg.split("=", 1)[1] for arg in command if arg.startswith("--deliver-to="))
    ingress_port = services["webhooks"]["environment"]["CARTLOOM_WEBHOOK_INGRESS_PORT"]
    assert target == f"http://webhooks:{ingress_port}/webhooks/shopify"
    assert simulator["depends_on"]["webhooks"]["condition"] == "service_healthy"
    # It signs with the secret the workers verify, and both are set out of the box.
    assert simulator["environment"]["CARTLOOM_SHOPIFY_WEBHOOK_SECRET"]
    assert simulator["environment"]["CARTLOOM_SHOPIFY_ACCESS_TOKEN"]


def test_prometheus_and_grafana_use_the_repositorys_config() -> None:
    services = compose_config()["services"]
    prometheus_mounts = " ".join(volume_specs(services["prometheus"]))
    grafana_mounts = " ".join(volume_specs(services["grafana"]))
    assert f"{ROOT}/deploy/prometheus:" in prometheus_mounts
    assert f"{ROOT}/deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml" in (
        prometheus_mounts
    )
    assert f"{ROOT}/deploy/grafana:" in grafana_mounts
    for kind in ("datasources", "dashboards"):
        provisioning = f"{ROOT}/deploy/compose/grafana/provisioning/{kind}"
        assert f"{provisioning}:/etc/grafana/provisioning/{kind}" in grafana_mounts
        assert list(Path(provisioning).glob("*.yml"))
    dashboards = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/dashboards/cartloom.yml").read_text()
    )
    (provider,) = dashboards["providers"]
    assert f"{ROOT}/deploy/grafana:{provider['options']['path']}" in grafana_mounts
    assert list((ROOT / "deploy" / "grafana").glob("*.json")), "dashboards to load"


def test_a_copied_env_example_keeps_the_stacks_own_addresses(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    example = (ROOT / ".env.example").read_text()
    env_file.write_text(example.replace("CARTLOOM_LOG_LEVEL=info", "CARTLOOM_LOG_LEVEL=debug"))
    env = compose_config(env_file)["services"]["worker"]["environment"]
    assert env["CARTLOOM_LOG_LEVEL"] == "debug"  # passed through from .env
    assert "127.0.0.1" not in env["CARTLOOM_BROKER_URL"]  # the stack's address wins
    assert env["CARTLOOM_DYNAMODB_ENDPOINT"] == "http://dynamodb:5000"


def test_compose_prometheus_config_is_valid() -> None:
    promtool = tool("promtool")
    config = (ROOT / "deploy" / "compose" / "prometheus.yml").read_text()
    # Point the rule globs at the repository's rules so promtool checks those too.
    assert "/etc/prometheus/cartloom/" in config
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prometheus.yml"
        path.write_text(config.replace("/etc/prometheus/cartloom/", f"{ROOT}/deploy/prometheus/"))
        result = subprocess.run(
            [promtool, "check", "config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", ["worker", "webhooks", "init", "simulator"])
def test_aws_credentials_never_reach_real_aws(service: str) -> None:
    env = compose_config()["services"][service]["environment"]
    assert env["CARTLOOM_DYNAMODB_ENDPOINT"] == "http://dynamodb:5000"


def test_one_off_commands_run_the_cli_with_the_stacks_settings() -> None:
    services = compose_config()["services"]
    cli = services["cli"]
    assert cli["profiles"] == ["tools"], "not started by `up`"
    assert "entrypoint" not in cli, "the image's entry point: `cartloom`"
    assert cli["environment"] == services["worker"]["environment"]


def test_compose_refuses_to_start_without_an_api_token() -> None:
    result = compose_config_without_token()
    assert result.returncode != 0
    assert "set CARTLOOM_API_TOKEN in .env" in result.stderr
    env = compose_config()["services"]["worker"]["environment"]
    assert env["CARTLOOM_API_TOKEN"] == COMPOSE_TEST_TOKEN


def _make_compose_commands(tmp_path: Path, plugin: bool) -> list[str]:
    """The commands `make compose-up compose-down` would run, with a stand-in `docker` first on
    PATH that has the Compose v2 plugin (``plugin``) or not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    answer = "echo 'Docker Compose version v2.40.3'; exit 0" if plugin else "exit 1"
    docker.write_text(f'#!/bin/sh\n[ "$1 $2" = "compose version" ] && {{ {answer}; }}\nexit 1\n')
    docker.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"COMPOSE", "MAKEFLAGS", "MAKELEVEL"}}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
    result = subprocess.run(
        [tool("make"), "-s", "-n", "-C", str(ROOT), "compose-up", "compose-down"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_uses_compose_v2_when_docker_has_it(tmp_path: Path) -> None:
    up, down = _make_compose_commands(tmp_path, plugin=True)
    assert up.startswith("docker compose up -d --build --scale worker=")
    assert down == "docker compose down"


def test_make_falls_back_to_docker_compose_v1(tmp_path: Path) -> None:
    up, down = _make_compose_commands(tmp_path, plugin=False)
    assert up.startswith("docker-compose up -d --build --scale worker=")
    assert down == "docker-compose down"


def test_the_checks_use_the_compose_the_makefile_would() -> None:
    command = compose_command()
    assert command[-1] in {"compose", "docker-compose"} or command[-1].endswith("docker-compose")


def test_the_dynamodb_endpoint_runs_the_checkouts_server_in_motos_image() -> None:
    services = compose_config()["services"]
    dynamodb = services["dynamodb"]
    pinned = re.search(r"^moto==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and dynamodb["image"] == f"motoserver/moto:{pinned.group(1)}", "as the tests"
    assert dynamodb["entrypoint"][:3] == ["python", "-m", "devstack.dynamodb_server"]
    (mount,) = (spec for spec in volume_specs(dynamodb) if "devstack" in spec)
    source, target, mode = mount.rsplit(":", 2)
    assert Path(source).resolve() == ROOT / "devstack"
    assert (target, mode) == (f"{dynamodb['working_dir']}/devstack", "ro")
    assert "--port=5000" in dynamodb["entrypoint"]
    assert services["worker"]["environment"]["CARTLOOM_DYNAMODB_ENDPOINT"] == "http://dynamodb:5000"
