"""deploy/k8s: every overlay renders, validates against the API schemas, and runs safe workers."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    configmap_data,
    kinds,
    one,
    render,
    worker_container,
)

BUILT_IN_GROUPS = {"v1", "apps/v1", "policy/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_in_kinds_pass_the_api_schemas(overlay: str) -> None:
    built_in = [doc for doc in render(overlay) if doc["apiVersion"] in BUILT_IN_GROUPS]
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= {
        doc["kind"] for doc in built_in
    }
    for doc in built_in:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_the_validator_catches_a_broken_manifest() -> None:
    statefulset = dict(one(render("prod"), "StatefulSet"))
    statefulset["spec"] = {**statefulset["spec"], "replicaz": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlay_namespace(overlay: str) -> None:
    docs = render(overlay)
    (namespace,) = (d["metadata"]["name"] for d in kinds(docs, "Namespace"))
    others = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in others} == {namespace}
    assert one(docs, "Namespace")["metadata"]["labels"]["istio-injection"] == "enabled"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_are_a_statefulset_with_a_rocksdb_volume(overlay: str) -> None:
    docs = render(overlay)
    statefulset = one(docs, "StatefulSet")
    container = worker_container(docs)
    settings = configmap_data(docs)
    assert settings["CARTLOOM_STORE"].startswith("rocksdb://")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings["CARTLOOM_DATA_DIR"]
    assert container["args"][0] == "worker"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_has_a_stable_identity(overlay: str) -> None:
    docs = render(overlay)
    statefulset = one(docs, "StatefulSet")
    env = {e["name"]: e for e in worker_container(docs)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CARTLOOM_GROUP_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    # Peers forward queries to <pod>.<headless service>: that Service must exist and be headless.
    service_name = statefulset["spec"]["serviceName"]
    assert env["CARTLOOM_WEB_HOST"]["value"].startswith(f"$(POD_NAME).{service_name}.")
    (headless,) = (s for s in kinds(docs, "Service") if s["metadata"]["name"] == service_name)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_healthz_and_readyz_on_the_web_port(overlay: str) -> None:
    docs = render(overlay)
    container = worker_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(configmap_data(docs)["CARTLOOM_WEB_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    # Recovery of a large table may take minutes: liveness must not kill a recovering worker.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_and_limits_are_set(overlay: str) -> None:
    resources = worker_container(render(overlay))["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_run_as_the_images_non_root_user(overlay: str) -> None:
    docs = render(overlay)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile names a numeric USER"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert pod["securityContext"]["fsGroup"] == int(user.group(1))  # can write its volume
    container = worker_container(docs)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert pod["terminationGracePeriodSeconds"] >= 30  # time to commit and leave the group


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_disruption_budget_covers_the_workers_one_at_a_time(overlay: str) -> None:
    docs = render(overlay)
    pdb = one(docs, "PodDisruptionBudget")
    labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_workers_by_named_port(overlay: str) -> None:
    docs = render(overlay)
    labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in worker_container(docs)["ports"]}
    for service in kinds(docs, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_not_the_configmap(overlay: str) -> None:
    docs = render(overlay)
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in worker_container(docs)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert len(refs) == 1
    generated = {s["metadata"]["name"] for s in kinds(docs, "Secret")}
    if overlay == "prod":
        assert not generated, "prod's Secret is created outside git"
        assert refs == {"cartloom-secrets"}
    else:
        assert refs <= generated
