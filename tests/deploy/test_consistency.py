"""Code, topics.yaml, .env.example, docker-compose.yml and deploy/k8s must agree.

Each failure names what disagrees and where to fix it: a new setting must be added to
.env.example, docker-compose.yml (x-cartloom-env) and deploy/k8s/base/settings.env (or the
Secret in deploy/k8s/base/statefulset.yaml when it is a secret).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cartloom.agents.intake import intake_group_id
from cartloom.core.settings import Settings
from cartloom.stream.app import create_app
from tests.deploy.manifests import (
    OVERLAYS,
    ROOT,
    WORKER,
    Doc,
    broker_hosts,
    compose_config,
    configmap_data,
    ingress_container,
    kinds,
    named,
    namespace_of,
    one,
    render,
    secret_setting_names,
    setting_names,
    topology,
    unset_on_purpose,
    with_stand_in_files,
    worker_container,
)

#: Set per container by the compose worker's entry point, or unset on purpose there.
COMPOSE_PER_CONTAINER = {
    "CARTLOOM_WEB_HOST": "each replica advertises its own container hostname",
    "CARTLOOM_GROUP_INSTANCE_ID": "replicas share one environment: a shared id would fence them",
}


#: What `cartloom shopify ingress` reads (cartloom/cli/main.py, build_receiver): each must be set
#: for it in every deployment, from the ConfigMap, the Secret or the compose environment.
INGRESS_SETTINGS = {
    "CARTLOOM_BROKER_URL",
    "CARTLOOM_KAFKA_SECURITY_PROTOCOL",
    "CARTLOOM_KAFKA_SSL_CHECK_HOSTNAME",
    "CARTLOOM_WEB_BIND",
    "CARTLOOM_WEBHOOK_INGRESS_PORT",
    "CARTLOOM_SHOPIFY_WEBHOOK_SECRET",
    "CARTLOOM_SHOPIFY_SHOP_SECRETS",
    "CARTLOOM_SHOPIFY_WEBHOOK_MAX_BYTES",
    "CARTLOOM_SHOPIFY_WEBHOOK_ENQUEUE_TIMEOUT",
    "CARTLOOM_SHOPIFY_PRODUCER_LINGER_MS",
    "CARTLOOM_LOG_LEVEL",
    "CARTLOOM_GC_YOUNG_THRESHOLD",
}


def env_names(container: Doc) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_the_ingress_settings_are_real_settings() -> None:
    unknown = INGRESS_SETTINGS - setting_names()
    assert not unknown, f"renamed or removed in cartloom/core/settings.py: {sorted(unknown)}"


def test_env_example_lists_every_setting() -> None:
    listed = set(
        re.findall(r"^#?\s*(CARTLOOM_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    missing = setting_names() - listed
    assert not missing, f"add to .env.example: {sorted(missing)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_configured_in_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    configured = set(configmap_data(docs)) | env_names(worker_container(docs))
    missing = setting_names() - configured - unset_on_purpose(overlay)
    assert not missing, (
        f"{overlay}: settings neither in the ConfigMap, the worker env nor commented out as "
        f"unset on purpose: {sorted(missing)} (edit deploy/k8s/base/settings.env)"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_holds_no_stale_or_secret_keys(overlay: str) -> None:
    keys = set(configmap_data(render(overlay)))
    unknown = {k for k in keys if k.startswith("CARTLOOM_")} - setting_names()
    assert not unknown, f"{overlay}: the ConfigMap sets settings the code does not read: {unknown}"
    leaked = keys & secret_setting_names()
    assert not leaked, f"{overlay}: secrets belong in the Secret, not the ConfigMap: {leaked}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_gets_every_setting_it_reads_and_no_unknown_one(overlay: str) -> None:
    docs = render(overlay)
    container = ingress_container(docs)
    missing = INGRESS_SETTINGS - set(configmap_data(docs)) - env_names(container)
    assert not missing, f"{overlay}: the webhook ingress is not given {sorted(missing)}"
    unknown = {n for n in env_names(container) if n.startswith("CARTLOOM_")} - setting_names()
    assert not unknown, (
        f"{overlay}: deployment.yaml sets settings the code does not read: {unknown}"
    )
    env = {e["name"]: e for e in container["env"]}
    for name in secret_setting_names() & set(env):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_setting_comes_from_the_secret(overlay: str) -> None:
    env = {e["name"]: e for e in worker_container(render(overlay))["env"]}
    for name in secret_setting_names():
        assert name in env, f"{overlay}: {name} is a secret: add a secretKeyRef in statefulset.yaml"
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name


def kubernetes_env(docs: tuple[Doc, ...], container: Doc | None = None) -> dict[str, str]:
    """The worker's (or ``container``'s) environment as a pod would see it (secrets stubbed)."""
    statefulset = one(docs, "StatefulSet")
    pod_name = f"{statefulset['metadata']['name']}-0"
    namespace = namespace_of(docs)
    env = dict(configmap_data(docs))
    for item in (container or worker_container(docs))["env"]:
        if "value" in item:
            value = item["value"].replace("$(POD_NAME)", pod_name)
            env[item["name"]] = value.replace("$(POD_NAMESPACE)", namespace)
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = "stub-secret"
    env["CARTLOOM_SHOPIFY_SHOP_SECRETS"] = ""
    with_stand_in_files(docs, container or worker_container(docs), env)
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("CARTLOOM_"):
            monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_settings_are_valid(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(overlay)
    settings = settings_from(kubernetes_env(docs), monkeypatch)
    assert settings.store.startswith("rocksdb://")
    assert settings.group_instance_id == f"{one(docs, 'StatefulSet')['metadata']['name']}-0"
    assert settings.web_host.endswith(".svc.cluster.local")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_ingress_settings_are_valid(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    container = ingress_container(docs)
    settings = settings_from(kubernetes_env(docs, container), monkeypatch)
    (port,) = (p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert settings.webhook_ingress_port == port
    assert settings.web_bind == "0.0.0.0"
    assert settings.shopify_webhook_secret, "every delivery would get 401"
    assert settings.broker_url == configmap_data(docs)["CARTLOOM_BROKER_URL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_group_faust_consumes_in(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    settings = settings_from(kubernetes_env(docs), monkeypatch)
    app = create_app(settings, topology())
    assert app.conf.consumer_group_instance_id == settings.group_instance_id
    for trigger in keda_triggers(docs):
        meta = trigger["metadata"]
        if meta["topic"] == "orders":  # read by the order intake, in its own group
            assert meta["consumerGroup"] == intake_group_id(app.conf.id)
        else:
            assert meta["consumerGroup"] == app.conf.id  # Faust's group.id


def keda_triggers(docs: tuple[Doc, ...]) -> list[Doc]:
    """The triggers of the workers' ScaledObject (the sinks': tests/deploy/test_split_sinks.py)."""
    return list(named(docs, "ScaledObject", WORKER)["spec"]["triggers"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_never_scales_past_the_partitions(overlay: str) -> None:
    docs = render(overlay)
    topics = topology()
    scaled = named(docs, "ScaledObject", WORKER)["spec"]
    watched = {t["metadata"]["topic"] for t in keda_triggers(docs)}
    unknown = watched - set(topics.topics)
    assert not unknown, f"KEDA watches topics topics.yaml does not declare: {unknown}"
    # Tables spread over their source topics' partitions too: a worker beyond those is idle.
    sources = {table.source for table in topics.tables.values()}
    limits = {name: topics.topic(name).partitions for name in watched | sources}
    fewest = min(limits.values())
    assert scaled["maxReplicaCount"] <= fewest, (
        f"{overlay}: KEDA maxReplicaCount {scaled['maxReplicaCount']} is above the partition "
        f"count {fewest} ({limits}): lower it in the overlay or raise partitions in topics.yaml"
    )
    assert one(docs, "StatefulSet")["spec"]["replicas"] <= scaled["maxReplicaCount"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_brokers_the_workers_use(overlay: str) -> None:
    docs = render(overlay)
    brokers = broker_hosts(configmap_data(docs)["CARTLOOM_BROKER_URL"])
    # Every ScaledObject's: the workers' and, where they scale apart, the sinks'.
    for trigger in (t for s in kinds(docs, "ScaledObject") for t in s["spec"]["triggers"]):
        servers = set(trigger["metadata"]["bootstrapServers"].split(","))
        assert servers == brokers, (
            f"{overlay}: trigger {trigger['name']} watches {servers}, workers use {brokers}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_every_topic_orders_and_stock_arrive_on(overlay: str) -> None:
    watched = {t["metadata"]["topic"] for t in keda_triggers(render(overlay))}
    external = {"orders", "orders.accepted", "order.events", "inventory", "shopify.webhooks"}
    external &= set(topology().topics)
    assert external <= watched


def test_compose_passes_every_setting_to_the_workers() -> None:
    env = compose_config()["services"]["worker"]["environment"]
    missing = setting_names() - set(env) - set(COMPOSE_PER_CONTAINER)
    assert not missing, f"add to x-cartloom-env in docker-compose.yml: {sorted(missing)}"
    unknown = {k for k in env if k.startswith("CARTLOOM_")} - setting_names()
    assert not unknown, f"docker-compose.yml sets settings the code does not read: {unknown}"


def test_compose_gives_the_ingress_the_workers_settings() -> None:
    services = compose_config()["services"]
    env = services["webhooks"]["environment"]
    assert env == services["worker"]["environment"], "one x-cartloom-env for both"
    missing = INGRESS_SETTINGS - set(env)
    assert not missing, f"the others pass through from .env (unset: default): {missing}"
    # The stack's own: its brokers, its port, the secret the simulator signs with.
    fixed = ("CARTLOOM_BROKER_URL", "CARTLOOM_WEB_BIND", "CARTLOOM_WEBHOOK_INGRESS_PORT")
    for name in (*fixed, "CARTLOOM_SHOPIFY_WEBHOOK_SECRET"):
        assert env[name], name


def test_compose_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose_config()["services"]["worker"]["environment"]
    settings = settings_from({k: v for k, v in env.items() if v is not None}, monkeypatch)
    assert settings.web_bind == "0.0.0.0"
    assert settings.dynamodb_endpoint == "http://dynamodb:5000"


def test_compose_and_kubernetes_scrape_the_web_ingress_and_sink_ports() -> None:
    compose_prometheus = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    scraped = {
        (name, sd["port"])
        for job in compose_prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    env = compose_config()["services"]["worker"]["environment"]
    web_port = int(env["CARTLOOM_WEB_PORT"])
    ingress_port = int(env["CARTLOOM_WEBHOOK_INGRESS_PORT"])
    sink_port = int(env["CARTLOOM_SINK_PORT"])
    assert scraped == {("worker", web_port), ("webhooks", ingress_port), ("sinks", sink_port)}
    jobs = {job["job_name"] for job in compose_prometheus["scrape_configs"]}
    assert "cartloom-webhooks" in jobs, "named as its Kubernetes Service (the job there)"
    for overlay in OVERLAYS:
        settings = configmap_data(render(overlay))
        assert int(settings["CARTLOOM_WEB_PORT"]) == web_port
        assert int(settings["CARTLOOM_WEBHOOK_INGRESS_PORT"]) == ingress_port
        assert int(settings["CARTLOOM_SINK_PORT"]) == sink_port


def test_prometheus_rule_files_are_loaded_by_the_compose_prometheus() -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    globs = [g.replace("/etc/prometheus/cartloom/", "") for g in config["rule_files"]]
    rules_dir = ROOT / "deploy" / "prometheus"
    rule_files = [
        path
        for path in (rules_dir.rglob("*.y*ml") if rules_dir.exists() else [])
        if "groups" in (yaml.safe_load(path.read_text()) or {})
    ]
    for path in rule_files:
        relative = path.relative_to(rules_dir)
        assert any(Path(relative).match(g) for g in globs), (
            f"deploy/prometheus/{relative} holds rules the compose Prometheus does not load "
            f"(rule_files in deploy/compose/prometheus.yml: {config['rule_files']})"
        )
