"""The sinks apart in Kubernetes (components/split-sinks, -keda, -istio): `cartloom sink` as a
Deployment of its own, the workers without materialisers exactly when it is on, KEDA on the
lag of the sink groups the code reads in, and the mesh policy of the sink pods.

The names the manifests must hold (consumer groups, changelog topics, partitions, ports, HTTP
paths) are derived here from the code and topics.yaml, never copied.
"""

from __future__ import annotations

import json
import typing

import pytest

from cartloom.core.settings import Settings
from cartloom.core.topology import Topology, load_topology
from cartloom.sinks.materialiser import sink_group_id
from cartloom.sinks.process import sink_app
from cartloom.sinks.runner import STORES, SinkSupervisor, changelog_entities
from tests.deploy.manifests import (
    RENDERS,
    ROOT,
    SINKS,
    Doc,
    components_of,
    configmap_data,
    kinds,
    named,
    one,
    pod_labels,
    port_names,
    render,
    renders_with,
    selected_workloads,
    sinks_container,
    sinks_deployment,
    worker_container,
)
from tests.deploy.test_consistency import kubernetes_env, settings_from
from tests.deploy.test_kubernetes import is_built_in
from tests.deploy.test_mesh_and_scaling import PROMETHEUS_PRINCIPAL, allowed, worker_principal

#: The Kafka secrets, the only ones a sink process reads (it serves no API, calls no Shopify).
KAFKA_SECRETS = {"CARTLOOM_KAFKA_SASL_PASSWORD", "CARTLOOM_KAFKA_SSL_KEY_PASSWORD"}


def sink_paths() -> set[str]:
    """The GET paths `cartloom sink` serves (cartloom/sinks/process.py)."""
    app = sink_app(typing.cast(SinkSupervisor, None), list(STORES))
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }


def sink_settings(docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a sink pod runs with: the ConfigMap and its env (secrets stubbed)."""
    return settings_from(kubernetes_env(docs, sinks_container(docs)), monkeypatch)


def sink_topology(settings: Settings) -> Topology:
    """topics.yaml as `cartloom sink` loads it for these settings (the namespace's prefix)."""
    return load_topology(ROOT / "topics.yaml", settings.topic_prefix)


def test_split_sinks_is_what_a_plain_cluster_accepts() -> None:
    docs = render("base+split-sinks")
    custom = [f"{d['apiVersion']} {d['kind']}" for d in docs if not is_built_in(d)]
    assert not custom, f"split-sinks needs no CRD; move these to split-sinks-*: {custom}"
    deployment = sinks_deployment(docs)
    assert deployment is not None
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert not [a for a in annotations if "istio.io" in a], "no sidecar to configure here"


@pytest.mark.parametrize("name", renders_with("split-sinks"))
def test_the_sinks_deployment_runs_cartloom_sink_like_the_workers(name: str) -> None:
    docs = render(name)
    deployment = sinks_deployment(docs)
    assert deployment is not None
    container = sinks_container(docs)
    worker = worker_container(docs)
    assert container["args"] == ["sink"], "both stores: `cartloom sink`"
    assert "command" not in container, "the image's entry point: `cartloom`"
    assert pod_labels(deployment)["app.kubernetes.io/component"] == "sinks"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    # The same image, settings, identity (the IAM role for DynamoDB) and security context.
    assert container["image"] == worker["image"]
    assert container["envFrom"] == worker["envFrom"]
    assert container["securityContext"] == worker["securityContext"]
    pod = deployment["spec"]["template"]["spec"]
    worker_pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == worker_pod["serviceAccountName"]
    assert pod["securityContext"] == worker_pod["securityContext"]
    # Kafka's secrets only, from the one Secret, each under its own name.
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(secrets) == KAFKA_SECRETS
    for variable, ref in secrets.items():
        assert ref["key"] == variable
        assert ref["optional"] is True, "unused on PLAINTEXT"
    # Stateless: offsets are committed after the writes, nothing is kept on disk.
    assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


@pytest.mark.parametrize("name", renders_with("split-sinks"))
def test_sink_probes_and_scrapes_hit_the_sink_port_paths(name: str) -> None:
    docs = render(name)
    container = sinks_container(docs)
    deployment = sinks_deployment(docs)
    assert deployment is not None
    sink_port = int(configmap_data(docs)["CARTLOOM_SINK_PORT"])
    assert port_names(deployment) == {"http": sink_port}
    paths = sink_paths()
    assert {"/healthz", "/readyz", "/metrics"} <= paths, paths
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # 503 while a store's materialiser waits to restart.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Scraped through a Service of its own, on that port: the job is the Service's name, as
    # docker-compose names it (deploy/compose/prometheus.yml).
    service = named(docs, "Service", SINKS)
    assert service["metadata"]["labels"]["cartloom.io/scrape"] == "true"
    assert selected_workloads(docs, service["spec"]["selector"]) == [deployment]
    (port,) = service["spec"]["ports"]
    assert port_names(deployment)[port["targetPort"]] == sink_port
    assert service["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("name", RENDERS)
def test_the_workers_run_the_sinks_exactly_when_split_sinks_is_off(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(name)
    settings = settings_from(kubernetes_env(docs), monkeypatch)
    split = "split-sinks" in components_of(name)
    assert settings.sinks_enabled is not split, (
        f"{name}: the workers {'run' if settings.sinks_enabled else 'do not run'} the sinks"
    )
    assert (sinks_deployment(docs) is not None) is split, "someone must write the views"
    # One home: the ConfigMap (split-sinks merges its value there), never the pod's env.
    assert "CARTLOOM_SINKS_ENABLED" in configmap_data(docs)
    assert "CARTLOOM_SINKS_ENABLED" not in {e["name"] for e in worker_container(docs)["env"]}


@pytest.mark.parametrize("name", renders_with("split-sinks"))
def test_the_sink_pods_settings_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(name)
    settings = sink_settings(docs, monkeypatch)
    deployment = sinks_deployment(docs)
    assert deployment is not None
    assert settings.sink_port == port_names(deployment)["http"]
    assert settings.web_bind == "0.0.0.0", "the probes come from the kubelet, not localhost"
    assert settings.broker_url == configmap_data(docs)["CARTLOOM_BROKER_URL"]
    assert changelog_entities(settings, sink_topology(settings)), "nothing to materialise"


def sinks_scaled_object(docs: tuple[Doc, ...]) -> Doc:
    return named(docs, "ScaledObject", SINKS)


@pytest.mark.parametrize("name", renders_with("split-sinks-keda"))
def test_keda_scales_the_sinks_deployment(name: str) -> None:
    docs = render(name)
    scaled = sinks_scaled_object(docs)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    deployment = sinks_deployment(docs)
    assert deployment is not None
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert target["envSourceContainerName"] == sinks_container(docs)["name"]
    # Never zero: the first order after a quiet spell would wait for a poll and a pod start.
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert "replicas" not in deployment["spec"], "KEDA owns the size"
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]
    assert all(p["type"] == "Pods" for p in up["policies"] + down["policies"])
    names = [t["name"] for t in scaled["spec"]["triggers"]]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("name", renders_with("split-sinks-keda"))
def test_the_sink_triggers_watch_every_sink_group_on_every_changelog(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(name)
    settings = sink_settings(docs, monkeypatch)
    changelogs = changelog_entities(settings, sink_topology(settings))
    # What the materialisers read in (cartloom/sinks/runner.py): one group per store, each on
    # the changelog of every materialised table.
    expected = {(sink_group_id(settings.app_id, s), topic) for s in STORES for topic in changelogs}
    triggers = sinks_scaled_object(docs)["spec"]["triggers"]
    watched = [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers]
    assert len(watched) == len(set(watched)), watched
    assert set(watched) == expected, (
        f"{name}: the triggers watch {sorted(set(watched))}, the sinks read {sorted(expected)}"
    )
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert meta["offsetResetPolicy"] == "earliest"  # as the materialisers' consumers start


@pytest.mark.parametrize("name", renders_with("split-sinks-keda"))
def test_keda_never_scales_the_sinks_past_the_changelog_partitions(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(name)
    settings = sink_settings(docs, monkeypatch)
    topics = sink_topology(settings)
    partitions = {
        spec.changelog_topic(settings.app_id): topics.table_partitions(table)
        for table, spec in topics.tables.items()
    }
    watched = {t["metadata"]["topic"] for t in sinks_scaled_object(docs)["spec"]["triggers"]}
    assert watched <= set(partitions), watched - set(partitions)
    fewest = min(partitions[topic] for topic in watched)
    maximum = sinks_scaled_object(docs)["spec"]["maxReplicaCount"]
    assert maximum <= fewest, (
        f"{name}: {maximum} sink pods, but a changelog has {fewest} partitions: the pods past "
        "it add no writer to that changelog (lower maxReplicaCount or raise partitions)"
    )


@pytest.mark.parametrize("name", renders_with("split-sinks-istio"))
def test_only_prometheus_may_call_the_sink_pods(name: str) -> None:
    docs = render(name)
    policy = named(docs, "AuthorizationPolicy", SINKS)
    assert selected_workloads(docs, policy["spec"]["selector"]["matchLabels"]) == [
        sinks_deployment(docs)
    ]
    assert allowed(policy, PROMETHEUS_PRINCIPAL, "GET", "/metrics")
    assert not allowed(policy, PROMETHEUS_PRINCIPAL, "POST", "/metrics")
    for caller in (worker_principal(docs), "cluster.local/ns/storefront/sa/storefront-api"):
        for path in sorted(sink_paths()):
            assert not allowed(policy, caller, "GET", path), (caller, path)


@pytest.mark.parametrize("name", renders_with("split-sinks-istio"))
def test_the_sinks_sidecar_outlives_the_last_batch(name: str) -> None:
    template = named(render(name), "Deployment", SINKS)["spec"]["template"]
    proxy = json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"])
    # Up before the sinks reach Kafka, and still forwarding while, after SIGTERM, the batch in
    # hand is written and committed, within the pod's grace period.
    assert proxy["holdApplicationUntilProxyStarts"] is True
    drain = proxy["terminationDrainDuration"]
    assert drain.endswith("s"), drain
    assert 5 < float(drain[:-1]) < template["spec"]["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("name", [n for n in RENDERS if "istio" in components_of(n)])
def test_a_mesh_with_the_sinks_apart_guards_them(name: str) -> None:
    chosen = components_of(name)
    if "split-sinks" in chosen:
        assert "split-sinks-istio" in chosen, f"{name}: the sink pods would have no policy"


def test_the_overlays_run_the_sinks_apart() -> None:
    # Prod, so the stores' pace never costs the order path; dev, so prod's shape is tried
    # first (docs/deploy.md, "The sinks apart").
    for overlay in ("dev", "prod"):
        chosen = components_of(overlay)
        assert {"split-sinks", "split-sinks-keda", "split-sinks-istio"} <= set(chosen), overlay
        assert kinds(render(overlay), "ScaledObject")


def test_the_deploy_docs_name_the_components() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for component in ("split-sinks", "split-sinks-keda", "split-sinks-istio"):
        assert f"components/{component}" in deploy, component
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "do not run them apart yet" not in operations
    assert "split-sinks-keda" in operations
