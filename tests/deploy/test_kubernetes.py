"""deploy/k8s: the plain base, each component over it and every overlay render with current
kustomize fields, validate against the API schemas, run safe workers and a stateless webhook
ingress."""

from __future__ import annotations

import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.crd_schemas import CRD_SCHEMAS, check_custom_resource
from tests.deploy.manifests import (
    COMPONENTS,
    INGRESS,
    K8S,
    K8S_VERSION,
    K8S_VERSIONS,
    KUBECTL_HINT,
    OVERLAYS,
    PREREQUISITES,
    RENDERS,
    ROOT,
    WORKER,
    Doc,
    _run,
    cartloom_containers,
    components_of,
    configmap_data,
    ingress_container,
    ingress_deployment,
    kinds,
    kustomize,
    named,
    one,
    pod_labels,
    port_names,
    render,
    selected_workloads,
    tool,
    worker_container,
    workloads,
)

#: The custom API groups each component brings (nothing else is custom); split-sinks brings
#: none: a plain cluster accepts it.
COMPONENT_GROUPS: dict[str, set[str]] = {
    "istio": {"security.istio.io"},
    "keda": {"keda.sh"},
    "prometheus-operator": {"monitoring.coreos.com"},
    "split-sinks": set(),
    "split-sinks-keda": {"keda.sh"},
    "split-sinks-istio": {"security.istio.io"},
}
#: kustomization fields kustomize 5 warns about, and what replaced them.
DEPRECATED_FIELDS = {
    "bases": "resources",
    "patchesStrategicMerge": "patches",
    "patchesJson6902": "patches",
    "commonLabels": "labels",
    "vars": "replacements",
}


def api_group(doc: Doc) -> str:
    """``apps/v1`` -> ``apps``; the core group (``v1``) is ``""``."""
    api_version = str(doc["apiVersion"])
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def is_built_in(doc: Doc) -> bool:
    """A kind every Kubernetes cluster serves (no CRD needed)."""
    group = api_group(doc)
    return "." not in group or group.endswith(".k8s.io")


def test_there_are_dev_and_prod_overlays_and_the_known_components() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert set(COMPONENTS) == set(COMPONENT_GROUPS)
    assert set(PREREQUISITES) <= set(COMPONENTS)
    assert {c for needs in PREREQUISITES.values() for c in needs} <= set(COMPONENTS)


def test_kubectl_reads_components() -> None:
    result = _run([tool("kubectl"), "version", "--client", "-o", "json"])
    assert result.returncode == 0, result.stderr
    client = json.loads(result.stdout)["clientVersion"]
    minor = re.match(r"\d+", client["minor"])  # "32", or "32+" on some builds
    assert minor, client
    version = (int(client["major"]), int(minor.group()))
    assert version >= (1, 21), f"kubectl {client['gitVersion']}: {KUBECTL_HINT}"


def kustomization_files() -> list[tuple[str, Doc]]:
    paths = sorted(K8S.glob("**/kustomization.yaml"))
    assert len(paths) >= 1 + len(COMPONENTS) + len(OVERLAYS)
    return [(str(p.relative_to(K8S)), yaml.safe_load(p.read_text())) for p in paths]


@pytest.mark.parametrize(("path", "kustomization"), kustomization_files())
def test_kustomizations_use_current_fields(path: str, kustomization: Doc) -> None:
    for field, replacement in DEPRECATED_FIELDS.items():
        assert field not in kustomization, f"{path}: `{field}` is deprecated, use `{replacement}`"
    for generator in kustomization.get("configMapGenerator", []):
        assert "env" not in generator, f"{path}: `env` is deprecated, use `envs`"
    if path.startswith("components/"):
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", path
        assert kustomization["kind"] == "Component", path
    else:
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1", path
        assert kustomization["kind"] == "Kustomization", path


@pytest.mark.parametrize("name", RENDERS)
def test_kustomize_renders_without_warnings(name: str) -> None:
    warnings = [line for line in kustomize(name).stderr.splitlines() if line.strip()]
    assert not warnings, f"{name}: {warnings}"


def test_the_base_is_what_a_plain_cluster_accepts() -> None:
    custom = [f"{d['apiVersion']} {d['kind']}" for d in render("base") if not is_built_in(d)]
    assert not custom, f"the base needs no CRD; move these to a component: {custom}"
    assert {d["kind"] for d in render("base")} == {
        "ServiceAccount",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
    }
    # No Istio-only setting either: a plain cluster has no sidecar to configure.
    for workload in workloads(render("base")):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert not [a for a in annotations if "istio.io" in a], workload["metadata"]["name"]


def _identity(doc: Doc) -> tuple[str, str, str]:
    name = doc["metadata"]["name"]
    if doc["kind"] in ("ConfigMap", "Secret"):
        # A generated name ends in a hash of the content, which a merged value changes.
        name = re.sub(r"-[a-z0-9]{10}$", "", name)
    return (doc["apiVersion"], doc["kind"], name)


def _render_before(component: str) -> str:
    """What ``component`` is applied over: the base, or the base with its prerequisite."""
    needs = PREREQUISITES.get(component, ())
    assert len(needs) <= 1, "one prerequisite is rendered as base+<it>"
    return f"base+{needs[0]}" if needs else "base"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_adds_only_its_own_kinds(component: str) -> None:
    before = {_identity(d) for d in render(_render_before(component))}
    added = [d for d in render(f"base+{component}") if _identity(d) not in before]
    assert added, f"{component} adds nothing"
    if COMPONENT_GROUPS[component]:
        # A component for a controller adds that controller's kinds, nothing built in.
        assert {api_group(d) for d in added} == COMPONENT_GROUPS[component]
    else:
        assert all(is_built_in(d) for d in added), f"{component} must need no CRD"
    # What it is applied over stays (a component adds or patches, it removes nothing).
    assert before <= {_identity(d) for d in render(f"base+{component}")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_choose_components_prometheus_operator_before_istio(overlay: str) -> None:
    chosen = components_of(overlay)
    assert set(chosen) <= set(COMPONENTS), chosen
    if {"istio", "prometheus-operator"} <= set(chosen):
        # Components apply in order: istio's patch turns the ServiceMonitor's scrapes to mTLS.
        assert chosen.index("prometheus-operator") < chosen.index("istio")
    for component in chosen:
        for needed in PREREQUISITES.get(component, ()):
            # Its patches and its ScaledObject or policy are for what the prerequisite adds.
            assert needed in chosen, f"{overlay}: {component} needs {needed}"
            assert chosen.index(needed) < chosen.index(component), f"{needed} before {component}"


@pytest.mark.parametrize("name", RENDERS)
def test_every_object_passes_its_schema(name: str) -> None:
    """Built-in kinds against Kubernetes' schemas (strict: no unknown field), the custom kinds
    against their CRDs' required fields and types (tests/deploy/crd_schemas.py)."""
    docs = render(name)
    built_in = [doc for doc in docs if is_built_in(doc)]
    assert {
        "StatefulSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= {doc["kind"] for doc in built_in}
    for doc in built_in:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} ({version}): {exc}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{name}: {exc.message}")
    for doc in docs:
        if not is_built_in(doc):
            assert api_group(doc) in set().union(*COMPONENT_GROUPS.values()) | {
                "networking.istio.io"
            }, f"{name}: {doc['apiVersion']} {doc['kind']} comes from no component"
            try:
                check_custom_resource(doc)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_validators_catch_a_broken_manifest() -> None:
    statefulset = dict(one(render("prod"), "StatefulSet"))
    statefulset["spec"] = {**statefulset["spec"], "replicaz": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
    scaled = json.loads(json.dumps(named(render("prod"), "ScaledObject", WORKER)))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000  # KEDA wants a string
    with pytest.raises(jsonschema.ValidationError):
        check_custom_resource(scaled)
    rule = json.loads(json.dumps(one(render("prod"), "PrometheusRule")))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(jsonschema.ValidationError):
        check_custom_resource(rule)


def test_every_custom_kind_has_a_schema() -> None:
    docs = [doc for name in RENDERS for doc in render(name)]
    rendered = {(d["apiVersion"], d["kind"]) for d in docs if not is_built_in(d)}
    assert rendered == set(CRD_SCHEMAS), "a schema for each custom kind rendered, none unused"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlay_namespace(overlay: str) -> None:
    docs = render(overlay)
    (namespace,) = (d["metadata"]["name"] for d in kinds(docs, "Namespace"))
    others = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in others} == {namespace}
    labels = one(docs, "Namespace")["metadata"].get("labels", {})
    injected = labels.get("istio-injection") == "enabled"
    assert injected == ("istio" in components_of(overlay)), "the istio component labels it"


@pytest.mark.parametrize("overlay", RENDERS)
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


@pytest.mark.parametrize("overlay", RENDERS)
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


@pytest.mark.parametrize("overlay", RENDERS)
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


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_webhook_ingress_is_a_stateless_deployment(overlay: str) -> None:
    docs = render(overlay)
    deployment = ingress_deployment(docs)
    container = ingress_container(docs)
    assert container["args"] == ["shopify", "ingress"]
    assert "command" not in container, "the image's entry point: `cartloom`"
    assert container["image"] == worker_container(docs)["image"]
    assert pod_labels(deployment)["app.kubernetes.io/component"] == "webhooks"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    # Nothing kept on disk: no claim, only scratch space.
    pod = deployment["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
    # The HPA owns the replica count: a value here would be reset by every `kubectl apply`.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", RENDERS)
def test_ingress_probes_use_healthz_and_readyz_on_the_ingress_port(overlay: str) -> None:
    docs = render(overlay)
    container = ingress_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(configmap_data(docs)["CARTLOOM_WEBHOOK_INGRESS_PORT"])
    assert ports["http"] != int(configmap_data(docs)["CARTLOOM_WEB_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The producer connects at start only: a pod that never connected is restarted.
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def _seconds(duration: str) -> float:
    """``20s`` -> 20.0 (the Istio durations used here)."""
    assert duration.endswith("s"), duration
    return float(duration[:-1])


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_ingress_drains_within_its_grace_period(overlay: str) -> None:
    docs = render(overlay)
    template = ingress_deployment(docs)["spec"]["template"]
    container = ingress_container(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # After the pause, the requests in hand and the producer's flush take an enqueue timeout each.
    timeout = float(configmap_data(docs)["CARTLOOM_SHOPIFY_WEBHOOK_ENQUEUE_TIMEOUT"])
    drain = float(command[1]) + 2 * timeout
    assert template["spec"]["terminationGracePeriodSeconds"] > drain
    if "istio" not in components_of(overlay):
        return
    # The sidecar carries the flush to Kafka: it must outlive the drain.
    proxy = json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"])
    assert proxy["holdApplicationUntilProxyStarts"] is True
    assert _seconds(proxy["terminationDrainDuration"]) > drain


@pytest.mark.parametrize("overlay", RENDERS)
def test_requests_and_limits_are_set(overlay: str) -> None:
    for container in cartloom_containers(render(overlay)):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)


@pytest.mark.parametrize("overlay", RENDERS)
def test_workers_run_as_the_images_non_root_user(overlay: str) -> None:
    docs = render(overlay)
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile names a numeric USER"
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(user.group(1))
        assert pod["securityContext"]["fsGroup"] == int(user.group(1))  # can write its volume
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        # time to commit and leave the group / to finish the deliveries in hand
        assert pod["terminationGracePeriodSeconds"] >= 30
    for container in cartloom_containers(docs):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("overlay", RENDERS)
def test_pods_spread_over_zones_and_nodes(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        constraints = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        own = workload["spec"]["selector"]["matchLabels"]
        for constraint in constraints:
            assert constraint["labelSelector"]["matchLabels"] == own, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_disruption_budgets_cover_each_workload_one_pod_at_a_time(overlay: str) -> None:
    docs = render(overlay)
    covered: list[str] = []
    for pdb in kinds(docs, "PodDisruptionBudget"):
        (workload,) = selected_workloads(docs, pdb["spec"]["selector"]["matchLabels"])
        covered.append(workload["metadata"]["name"])
        assert pdb["spec"]["maxUnavailable"] == 1
    assert sorted(covered) == sorted(w["metadata"]["name"] for w in workloads(docs))


@pytest.mark.parametrize("overlay", RENDERS)
def test_services_select_one_workload_by_named_port(overlay: str) -> None:
    docs = render(overlay)
    for service in kinds(docs, "Service"):
        name = service["metadata"]["name"]
        selected = selected_workloads(docs, service["spec"]["selector"])
        assert len(selected) == 1, f"{name} selects the pods of exactly one workload"
        targets = {p["targetPort"] for p in service["spec"]["ports"]}
        assert targets <= set(port_names(selected[0])), name


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_ingress_service_sends_port_80_to_the_ingress_port(overlay: str) -> None:
    docs = render(overlay)
    service = named(docs, "Service", INGRESS)
    assert service["spec"]["type"] == "ClusterIP"
    assert selected_workloads(docs, service["spec"]["selector"]) == [ingress_deployment(docs)]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    target = port_names(ingress_deployment(docs))[port["targetPort"]]
    assert target == int(configmap_data(docs)["CARTLOOM_WEBHOOK_INGRESS_PORT"])


@pytest.mark.parametrize("overlay", RENDERS)
def test_secrets_come_from_the_secret_not_the_configmap(overlay: str) -> None:
    docs = render(overlay)
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for container in cartloom_containers(docs)
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert len(refs) == 1, "the workers, the ingress and the sinks read one Secret"
    generated = {s["metadata"]["name"] for s in kinds(docs, "Secret")}
    if overlay == "dev":
        assert refs <= generated, "dev generates throwaway values"
    else:
        assert not generated, "the Secret is created outside git"
        assert refs == {"cartloom-secrets"}


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_api_token_and_webhook_secret_are_required(overlay: str) -> None:
    env = {e["name"]: e for e in worker_container(render(overlay))["env"]}
    for name in ("CARTLOOM_API_TOKEN", "CARTLOOM_SHOPIFY_WEBHOOK_SECRET"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        # The generated name carries a content hash (dev); otherwise it is the name to create.
        assert ref["name"].startswith("cartloom-secrets"), ref
        assert ref["key"] == name
        assert not ref.get("optional", False), f"{name}: no worker starts without it"
        for secret in kinds(render(overlay), "Secret"):
            if secret["metadata"]["name"] == ref["name"]:
                assert name in secret["data"], f"the generated Secret lacks {name}"


@pytest.mark.parametrize("overlay", RENDERS)
def test_the_ingress_loads_the_workers_settings_and_only_webhook_and_kafka_secrets(
    overlay: str,
) -> None:
    docs = render(overlay)
    container = ingress_container(docs)
    assert container["envFrom"] == worker_container(docs)["envFrom"]
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    # What verifies a delivery and what reaches Kafka, nothing more (no Admin API or query
    # token on the public edge).
    assert set(secrets) == {
        "CARTLOOM_SHOPIFY_WEBHOOK_SECRET",
        "CARTLOOM_SHOPIFY_SHOP_SECRETS",
        "CARTLOOM_KAFKA_SASL_PASSWORD",
        "CARTLOOM_KAFKA_SSL_KEY_PASSWORD",
    }
    assert not secrets["CARTLOOM_SHOPIFY_WEBHOOK_SECRET"].get("optional", False)
    assert secrets["CARTLOOM_SHOPIFY_SHOP_SECRETS"]["optional"] is True
    # Its own identity, without the workers' IAM role.
    account = ingress_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert account != one(docs, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]
    service_account = named(docs, "ServiceAccount", account)
    assert "eks.amazonaws.com/role-arn" not in service_account["metadata"].get("annotations", {})
    assert service_account["automountServiceAccountToken"] is False
