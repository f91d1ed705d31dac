"""The istio, keda and prometheus-operator components: the fields their resources need and what
they let through, over the base alone and in every overlay that chooses them."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest

from cartloom.agents.intake import intake_group_id
from tests.deploy.manifests import (
    INGRESS,
    INGRESS_PRINCIPAL,
    K8S,
    RENDERS,
    WORKER,
    Doc,
    cartloom_containers,
    components_of,
    configmap_data,
    ingress_container,
    ingress_deployment,
    kinds,
    named,
    namespace_of,
    one,
    port_names,
    render,
    renders_with,
    selected_workloads,
    sinks_deployment,
    workloads,
)

PROMETHEUS_PRINCIPAL = "cluster.local/ns/monitoring/sa/prometheus-k8s"


def _matches(value: str, patterns: list[str]) -> bool:
    """Istio string match: exact, ``prefix*``, ``*suffix`` or ``*``."""
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
        if pattern.startswith("*") and value.endswith(pattern[1:]):
            return True
    return False


def _rule_allows(rule: dict[str, Any], principal: str, method: str, path: str) -> bool:
    sources = [f["source"] for f in rule.get("from", [])]
    if sources and not any(_matches(principal, s.get("principals", ["*"])) for s in sources):
        return False
    operations = [t["operation"] for t in rule.get("to", [])]
    return not operations or any(
        _matches(method, op.get("methods", ["*"])) and _matches(path, op.get("paths", ["*"]))
        for op in operations
    )


def allowed(policy: Doc, principal: str, method: str, path: str) -> bool:
    """Istio's verdict for one request under a single ALLOW policy (no match = denied)."""
    assert policy["spec"]["action"] == "ALLOW"
    return any(_rule_allows(r, principal, method, path) for r in policy["spec"]["rules"])


def worker_principal(docs: tuple[Doc, ...]) -> str:
    account = one(docs, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]
    return f"cluster.local/ns/{namespace_of(docs)}/sa/{account}"


def worker_policy(docs: tuple[Doc, ...]) -> Doc:
    return named(docs, "AuthorizationPolicy", "cartloom-worker")


def ingress_policy(docs: tuple[Doc, ...]) -> Doc:
    return named(docs, "AuthorizationPolicy", INGRESS)


@pytest.mark.parametrize("overlay", renders_with("istio"))
def test_mtls_is_strict_for_the_whole_namespace(overlay: str) -> None:
    peer = one(render(overlay), "PeerAuthentication")
    assert peer["apiVersion"].startswith("security.istio.io/")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    assert "selector" not in peer["spec"]


@pytest.mark.parametrize("overlay", renders_with("istio"))
def test_authorization_policies_guard_each_workload(overlay: str) -> None:
    docs = render(overlay)
    guarded: list[str] = []
    for policy in kinds(docs, "AuthorizationPolicy"):
        (workload,) = selected_workloads(docs, policy["spec"]["selector"]["matchLabels"])
        guarded.append(workload["metadata"]["name"])
        for rule in policy["spec"]["rules"]:
            assert rule.get("from"), "a rule without `from` would let any caller in"
            for source in rule["from"]:
                assert "*" not in source["source"].get("principals", [])
    assert sorted(guarded) == sorted(w["metadata"]["name"] for w in workloads(docs))


@pytest.mark.parametrize("overlay", renders_with("istio"))
def test_only_the_ingress_gateway_may_post_webhooks_to_the_webhook_ingress(overlay: str) -> None:
    docs = render(overlay)
    policy = ingress_policy(docs)
    assert allowed(policy, INGRESS_PRINCIPAL, "POST", "/webhooks/shopify")
    for caller in (worker_principal(docs), "cluster.local/ns/storefront/sa/storefront-api"):
        assert not allowed(policy, caller, "POST", "/webhooks/shopify")
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/orders/o-1")  # the public edge
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/metrics")
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/readyz")
    assert allowed(policy, PROMETHEUS_PRINCIPAL, "GET", "/metrics")
    assert not allowed(policy, PROMETHEUS_PRINCIPAL, "POST", "/webhooks/shopify")


@pytest.mark.parametrize("overlay", renders_with("istio"))
def test_nothing_public_reaches_the_workers(overlay: str) -> None:
    docs = render(overlay)
    policy = worker_policy(docs)
    # Shopify's deliveries go to the ingress; the workers' own receiver is for small setups.
    for caller in (INGRESS_PRINCIPAL, worker_principal(docs), PROMETHEUS_PRINCIPAL):
        assert not allowed(policy, caller, "POST", "/webhooks/shopify")
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/orders/o-1")
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/metrics")
    assert allowed(policy, PROMETHEUS_PRINCIPAL, "GET", "/metrics")


@pytest.mark.parametrize("overlay", renders_with("istio"))
def test_only_named_services_may_query(overlay: str) -> None:
    docs = render(overlay)
    policy = worker_policy(docs)
    # Workers forward a query to the partition's owner, so their own principal (in this
    # overlay's namespace) must be one of the named callers.
    assert allowed(policy, worker_principal(docs), "GET", "/orders/o-1")
    assert allowed(policy, worker_principal(docs), "GET", "/inventory/sku-1")
    assert allowed(policy, "cluster.local/ns/storefront/sa/storefront-api", "GET", "/orders/o-1")
    assert not allowed(policy, "cluster.local/ns/other/sa/default", "GET", "/orders/o-1")
    assert not allowed(policy, "cluster.local/ns/storefront/sa/storefront-api", "GET", "/metrics")


@pytest.mark.parametrize("overlay", renders_with("keda"))
def test_keda_scales_the_statefulset_on_consumer_group_lag(overlay: str) -> None:
    docs = render(overlay)
    scaled = named(docs, "ScaledObject", WORKER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    statefulset = one(docs, "StatefulSet")
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
    assert target["name"] == statefulset["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    group = configmap_data(docs)["CARTLOOM_APP_ID"]
    assert scaled["spec"]["triggers"]
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        expected = intake_group_id(group) if meta["topic"] == "orders" else group
        assert meta["consumerGroup"] == expected, "KEDA must watch the group reading the topic"
        assert meta["topic"] and not meta["topic"].endswith(".dlq")
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert meta["offsetResetPolicy"] == "earliest"  # as Faust's consumers start


@pytest.mark.parametrize("overlay", renders_with("keda"))
def test_scale_up_waits_and_scale_in_is_slower(overlay: str) -> None:
    behavior = named(render(overlay), "ScaledObject", WORKER)["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"
    ]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] >= 60, "each scale step is a rebalance"
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]
    assert all(p["type"] == "Pods" for p in up["policies"] + down["policies"])


@pytest.mark.parametrize("overlay", RENDERS)
def test_hpa_scales_the_ingress_deployment_on_cpu(overlay: str) -> None:
    docs = render(overlay)
    hpa = named(docs, "HorizontalPodAutoscaler", INGRESS)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = ingress_deployment(docs)
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if overlay == "prod":
        assert hpa["spec"]["minReplicas"] >= 2, "a node or zone lost keeps a receiver"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    # Utilization is relative to requests: every container of the pod must request CPU.
    assert "cpu" in ingress_container(docs)["resources"]["requests"]
    behavior = hpa["spec"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]
    # No second autoscaler fights over it.
    scaled = [s["spec"]["scaleTargetRef"]["name"] for s in kinds(docs, "ScaledObject")]
    assert deployment["metadata"]["name"] not in scaled


def scraped_services(docs: tuple[Doc, ...]) -> list[Doc]:
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    return [
        s for s in kinds(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    ]


@pytest.mark.parametrize("overlay", renders_with("prometheus-operator"))
def test_service_monitor_scrapes_metrics_on_a_real_service_port(overlay: str) -> None:
    docs = render(overlay)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = scraped_services(docs)
    # Every workload's pods through exactly one Service: none missed, none scraped twice.
    scraped = [
        w["metadata"]["name"]
        for s in services
        for w in selected_workloads(docs, s["spec"]["selector"])
    ]
    assert sorted(scraped) == sorted(w["metadata"]["name"] for w in workloads(docs))
    for service in services:
        (workload,) = selected_workloads(docs, service["spec"]["selector"])
        if workload["kind"] == "StatefulSet":
            # Recovering (not ready) workers are scraped too.
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["publishNotReadyAddresses"] is True
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports, service["metadata"]["name"]
            # The scrape goes to the pod's port behind that Service port.
            assert ports[endpoint["port"]]["targetPort"] in port_names(workload)
            assert endpoint["path"] == "/metrics"
            if "istio" in components_of(overlay):
                # Under STRICT mTLS the scrape must present Istio's certificates.
                assert endpoint["scheme"] == "https"
                assert {"caFile", "certFile", "keyFile"} <= set(endpoint["tlsConfig"])
            else:
                # Without the mesh the workers serve plain HTTP.
                assert endpoint["scheme"] == "http"
                assert "tlsConfig" not in endpoint


def test_prod_exposes_only_the_webhook_route_publicly_on_the_ingress() -> None:
    docs = render("prod")
    (virtual_service,) = kinds(docs, "VirtualService")
    (gateway,) = kinds(docs, "Gateway")
    assert virtual_service["spec"]["gateways"] == [gateway["metadata"]["name"]]
    services = {s["metadata"]["name"]: s for s in kinds(docs, "Service")}
    webhook_port = int(configmap_data(docs)["CARTLOOM_WEBHOOK_INGRESS_PORT"])
    for route in virtual_service["spec"]["http"]:
        assert route["match"] == [
            {"uri": {"exact": "/webhooks/shopify"}, "method": {"exact": "POST"}}
        ]
        for destination in route["route"]:
            service = services[destination["destination"]["host"]]
            ports = {p["port"]: p for p in service["spec"]["ports"]}
            port = ports[destination["destination"]["port"]["number"]]
            # Delivered to the webhook ingress pods, on the port `shopify ingress` listens on.
            (workload,) = selected_workloads(docs, service["spec"]["selector"])
            assert workload == ingress_deployment(docs)
            assert port_names(workload)[port["targetPort"]] == webhook_port
    # The gateway's principal may POST there (and only there).
    assert allowed(ingress_policy(docs), INGRESS_PRINCIPAL, "POST", "/webhooks/shopify")
    assert all(s["tls"]["mode"] != "PASSTHROUGH" for s in gateway["spec"]["servers"])


@pytest.mark.parametrize("overlay", RENDERS)
def test_worker_env_names_are_unique(overlay: str) -> None:
    docs = render(overlay)
    for container in cartloom_containers(docs):
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), container["name"]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prometheusrule", K8S / "prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheus_rule_is_a_current_copy_of_deploy_prometheus_rules() -> None:
    generator = _generator()
    assert generator.rule_groups(), "deploy/prometheus/rules holds the alert and recording rules"
    assert generator.TARGET == K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
    assert generator.TARGET.read_text() == generator.render(), (
        "run: python deploy/k8s/prometheusrule.py"
    )


@pytest.mark.parametrize("overlay", renders_with("prometheus-operator"))
def test_alert_job_selectors_match_the_scraped_services(overlay: str) -> None:
    docs = render(overlay)
    monitor = one(docs, "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]  # so the job label is the Service's name
    jobs = [s["metadata"]["name"] for s in scraped_services(docs)]
    assert INGRESS in jobs
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    patterns = {m for r in rules for m in re.findall(r'job=~"([^"]+)"', str(r["expr"]))}
    assert patterns, "the alerts select the CartLoom scrape job"
    for pattern in patterns:
        for job in jobs:
            assert re.fullmatch(pattern, job), f"alerts select job=~{pattern!r}, a job is {job!r}"


@pytest.mark.parametrize("overlay", RENDERS)
def test_one_autoscaler_at_most_per_workload(overlay: str) -> None:
    docs = render(overlay)
    targets = [h["spec"]["scaleTargetRef"] for h in kinds(docs, "HorizontalPodAutoscaler")]
    targets += [s["spec"]["scaleTargetRef"] for s in kinds(docs, "ScaledObject")]
    names = [(t.get("kind", "Deployment"), t["name"]) for t in targets]
    assert len(names) == len(set(names)), f"two autoscalers fight over one workload: {names}"
    statefulset = one(docs, "StatefulSet")
    scaled = ("StatefulSet", statefulset["metadata"]["name"]) in names
    # The workers scale with KEDA only; without it the StatefulSet's size is the size.
    assert scaled == ("keda" in components_of(overlay))
    assert statefulset["spec"]["replicas"] >= 1
    # The sinks apart: KEDA with split-sinks-keda (and then no `replicas` for `kubectl apply`
    # to reset), else the Deployment's own size.
    sinks = sinks_deployment(docs)
    if sinks is None:
        return
    sinks_scaled = ("Deployment", sinks["metadata"]["name"]) in names
    assert sinks_scaled == ("split-sinks-keda" in components_of(overlay))
    if sinks_scaled:
        assert "replicas" not in sinks["spec"]
    else:
        assert sinks["spec"]["replicas"] >= 1
