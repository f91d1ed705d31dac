"""Istio, KEDA and ServiceMonitor resources: the fields they need, and what they let through."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest

from cartloom.agents.intake import intake_group_id
from tests.deploy.manifests import (
    INGRESS_PRINCIPAL,
    K8S,
    OVERLAYS,
    Doc,
    configmap_data,
    kinds,
    one,
    render,
    worker_container,
)


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


def namespace_of(docs: tuple[Doc, ...]) -> str:
    return str(one(docs, "StatefulSet")["metadata"]["namespace"])


def worker_principal(docs: tuple[Doc, ...]) -> str:
    account = one(docs, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]
    return f"cluster.local/ns/{namespace_of(docs)}/sa/{account}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mtls_is_strict_for_the_whole_namespace(overlay: str) -> None:
    peer = one(render(overlay), "PeerAuthentication")
    assert peer["apiVersion"].startswith("security.istio.io/")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    assert "selector" not in peer["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_authorization_policy_guards_the_workers(overlay: str) -> None:
    docs = render(overlay)
    policy = one(docs, "AuthorizationPolicy")
    labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for rule in policy["spec"]["rules"]:
        assert rule.get("from"), "a rule without `from` would let any caller in"
        for source in rule["from"]:
            assert "*" not in source["source"].get("principals", [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_ingress_may_post_webhooks(overlay: str) -> None:
    docs = render(overlay)
    policy = one(docs, "AuthorizationPolicy")
    assert allowed(policy, INGRESS_PRINCIPAL, "POST", "/webhooks/shopify")
    for caller in (worker_principal(docs), "cluster.local/ns/storefront/sa/storefront-api"):
        assert not allowed(policy, caller, "POST", "/webhooks/shopify")
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/orders/o-1")  # the public edge
    assert not allowed(policy, INGRESS_PRINCIPAL, "GET", "/metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_named_services_may_query(overlay: str) -> None:
    docs = render(overlay)
    policy = one(docs, "AuthorizationPolicy")
    # Workers forward a query to the partition's owner, so their own principal (in this
    # overlay's namespace) must be one of the named callers.
    assert allowed(policy, worker_principal(docs), "GET", "/orders/o-1")
    assert allowed(policy, worker_principal(docs), "GET", "/inventory/sku-1")
    assert allowed(policy, "cluster.local/ns/storefront/sa/storefront-api", "GET", "/orders/o-1")
    assert not allowed(policy, "cluster.local/ns/other/sa/default", "GET", "/orders/o-1")
    assert not allowed(policy, "cluster.local/ns/storefront/sa/storefront-api", "GET", "/metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_statefulset_on_consumer_group_lag(overlay: str) -> None:
    docs = render(overlay)
    scaled = one(docs, "ScaledObject")
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scale_up_waits_and_scale_in_is_slower(overlay: str) -> None:
    behavior = one(render(overlay), "ScaledObject")["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"
    ]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] >= 60, "each scale step is a rebalance"
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]
    assert all(p["type"] == "Pods" for p in up["policies"] + down["policies"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_metrics_on_a_real_service_port(overlay: str) -> None:
    docs = render(overlay)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s for s in kinds(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert len(services) == 1, "the ServiceMonitor selects exactly one Service"
    (service,) = services
    assert service["spec"]["clusterIP"] == "None", "scrape every pod, not one behind a VIP"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        # Under STRICT mTLS the scrape must present Istio's certificates.
        assert endpoint["scheme"] == "https"
        assert {"caFile", "certFile", "keyFile"} <= set(endpoint["tlsConfig"])


def test_prod_exposes_only_the_webhook_route_publicly() -> None:
    docs = render("prod")
    (virtual_service,) = kinds(docs, "VirtualService")
    (gateway,) = kinds(docs, "Gateway")
    assert virtual_service["spec"]["gateways"] == [gateway["metadata"]["name"]]
    services = {s["metadata"]["name"]: s for s in kinds(docs, "Service")}
    for route in virtual_service["spec"]["http"]:
        assert route["match"] == [
            {"uri": {"exact": "/webhooks/shopify"}, "method": {"exact": "POST"}}
        ]
        for destination in route["route"]:
            service = services[destination["destination"]["host"]]
            ports = {p["port"] for p in service["spec"]["ports"]}
            assert destination["destination"]["port"]["number"] in ports
    assert all(s["tls"]["mode"] != "PASSTHROUGH" for s in gateway["spec"]["servers"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_env_names_are_unique(overlay: str) -> None:
    names = [e["name"] for e in worker_container(render(overlay))["env"]]
    assert len(names) == len(set(names))


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prometheusrule", K8S / "prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheus_rule_is_a_current_copy_of_deploy_prometheus_rules() -> None:
    generator = _generator()
    assert generator.rule_groups(), "deploy/prometheus/rules holds the alert and recording rules"
    current = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert current == generator.render(), "run: python deploy/k8s/prometheusrule.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alert_job_selectors_match_the_scraped_service(overlay: str) -> None:
    docs = render(overlay)
    monitor = one(docs, "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]  # so the job label is the Service's name
    selector = monitor["spec"]["selector"]["matchLabels"]
    (service,) = (
        s for s in kinds(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    )
    job = service["metadata"]["name"]
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    patterns = {m for r in rules for m in re.findall(r'job=~"([^"]+)"', str(r["expr"]))}
    assert patterns, "the alerts select the CartLoom scrape job"
    for pattern in patterns:
        assert re.fullmatch(pattern, job), f"alerts select job=~{pattern!r}, the job is {job!r}"
