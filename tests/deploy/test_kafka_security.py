"""Secured Kafka in the deployments: where the secrets go, and KEDA speaking like the workers.

Each overlay secures Kafka its own way (dev: TLS with a client certificate, prod: SASL_SSL
with SCRAM-SHA-512). What must hold for any of them: the files the settings name are in a
read-only Secret volume of every pod that talks to Kafka, the passwords come from the
Secret, and the KEDA triggers (the workers' and the sinks') use the same protocol, mechanism,
credentials and files through a TriggerAuthentication, read from the pods they scale, or they
would measure nothing while the pods run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cartloom.core.settings import KAFKA_SASL_PROTOCOLS, KAFKA_TLS_PROTOCOLS, Settings
from cartloom.stream.kafka_clients import kafka_connection
from tests.deploy.manifests import (
    KAFKA_FILE_SETTINGS,
    OVERLAYS,
    ROOT,
    Doc,
    cartloom_containers,
    compose_config,
    configmap_data,
    kinds,
    named,
    render,
    scale_target,
    secret_key_of,
    secret_mount,
    stand_in_pki,
    volume_specs,
    worker_container,
)
from tests.deploy.test_consistency import kubernetes_env, settings_from

#: CARTLOOM_KAFKA_SASL_MECHANISM -> the KEDA Kafka scaler's ``sasl``.
KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
}
#: The Kafka scaler's authentication parameters (KEDA docs, "Apache Kafka").
KEDA_KAFKA_AUTH = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
#: KEDA parameter -> the file setting it must mirror.
KEDA_FILES = {
    "ca": "CARTLOOM_KAFKA_SSL_CAFILE",
    "cert": "CARTLOOM_KAFKA_SSL_CERTFILE",
    "key": "CARTLOOM_KAFKA_SSL_KEYFILE",
}
#: KEDA parameter -> the environment variable of the worker it must be read from.
KEDA_ENV = {
    "username": "CARTLOOM_KAFKA_SASL_USERNAME",
    "password": "CARTLOOM_KAFKA_SASL_PASSWORD",
    "keyPassword": "CARTLOOM_KAFKA_SSL_KEY_PASSWORD",
}


def worker_settings(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The worker's non-secret settings: the ConfigMap (no stand-ins)."""
    return configmap_data(docs)


def keda_triggers(docs: tuple[Doc, ...]) -> list[Doc]:
    """Every trigger of every ScaledObject (the workers'; the sinks' where they scale)."""
    return [t for s in kinds(docs, "ScaledObject") for t in s["spec"]["triggers"]]


def trigger_authentication(docs: tuple[Doc, ...], trigger: Doc) -> Doc:
    ref = trigger.get("authenticationRef")
    assert ref, f"trigger {trigger['name']} has no authenticationRef"
    assert ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
    found = named(docs, "TriggerAuthentication", ref["name"])
    assert found["apiVersion"] == "keda.sh/v1alpha1"
    return found


def auth_parameters(auth: Doc) -> dict[str, tuple[str, Doc]]:
    """parameter -> (how it is read: secretTargetRef or env, the entry)."""
    parameters: dict[str, tuple[str, Doc]] = {}
    for source in ("secretTargetRef", "env"):
        for entry in auth["spec"].get(source, []):
            assert entry["parameter"] not in parameters, f"{entry['parameter']} given twice"
            parameters[entry["parameter"]] = (source, entry)
    return parameters


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_triggers_speak_the_workers_protocol_and_mechanism(overlay: str) -> None:
    docs = render(overlay)
    settings = worker_settings(docs)
    protocol = settings["CARTLOOM_KAFKA_SECURITY_PROTOCOL"]
    mechanism = settings.get("CARTLOOM_KAFKA_SASL_MECHANISM")
    for trigger in keda_triggers(docs):
        meta = trigger["metadata"]
        tls = meta.get("tls", "disable")
        assert tls == ("enable" if protocol in KAFKA_TLS_PROTOCOLS else "disable"), (
            f"{overlay}: trigger {trigger['name']} tls={tls}, the workers use {protocol}"
        )
        sasl = meta.get("sasl", "none")
        expected = (
            KEDA_SASL[mechanism] if protocol in KAFKA_SASL_PROTOCOLS and mechanism else "none"
        )
        assert sasl == expected, f"{overlay}: trigger {trigger['name']} sasl={sasl} ({mechanism})"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_authenticates_with_the_workers_files_and_credentials(overlay: str) -> None:
    docs = render(overlay)
    settings = worker_settings(docs)
    # Every overlay shows a secured cluster (see the connection test below), so KEDA
    # always has something to authenticate with: a PLAINTEXT overlay is a mistake here.
    protocol = settings["CARTLOOM_KAFKA_SECURITY_PROTOCOL"]
    assert protocol in KAFKA_TLS_PROTOCOLS | KAFKA_SASL_PROTOCOLS, (
        f"{overlay}: the workers use {protocol}, the overlays show a secured cluster"
    )
    triggers = [(s, t) for s in kinds(docs, "ScaledObject") for t in s["spec"]["triggers"]]
    for scaled, trigger in triggers:
        # KEDA reads `env` (and the files' Secret) for the pods this ScaledObject scales.
        workload, container = scale_target(docs, scaled)
        # The ConfigMap the settings above come from.
        assert container["envFrom"] == worker_container(docs)["envFrom"], container["name"]
        env = {e["name"]: e for e in container["env"]}
        parameters = auth_parameters(trigger_authentication(docs, trigger))
        assert set(parameters) <= KEDA_KAFKA_AUTH, set(parameters) - KEDA_KAFKA_AUTH
        assert ("cert" in parameters) == ("key" in parameters), "cert and key go together"
        for parameter, setting in KEDA_FILES.items():
            path = settings.get(setting)
            assert (parameter in parameters) == bool(path), (
                f"{overlay}: the workers {'use' if path else 'do not use'} {setting}, KEDA"
                f" {'is' if parameter in parameters else 'is not'} given `{parameter}`"
            )
            if not path:
                continue
            source, entry = parameters[parameter]
            assert source == "secretTargetRef", f"{parameter} is a file of the Secret"
            _, volume = secret_mount(docs, container, path)
            assert entry["name"] == volume["secret"]["secretName"], parameter
            assert entry["key"] == secret_key_of(volume, path), parameter
        for parameter, variable in KEDA_ENV.items():
            if parameter not in parameters:
                continue
            source, entry = parameters[parameter]
            assert source == "env", f"{parameter}: read it from the pod, as it does"
            assert entry["name"] == variable
            # No containerName: each ScaledObject's envSourceContainerName says which.
            assert entry.get("containerName", container["name"]) == container["name"], (
                f"{overlay}: {scaled['metadata']['name']} scales {workload['metadata']['name']},"
                f" its TriggerAuthentication reads {entry['containerName']}"
            )
            assert variable in env or variable in settings, (
                f"{overlay}: {container['name']} has no {variable}"
            )
        mechanism = settings.get("CARTLOOM_KAFKA_SASL_MECHANISM")
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            assert {"username", "password"} <= set(parameters), f"{overlay}: SASL {mechanism}"
            password = env["CARTLOOM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert password["key"] == "CARTLOOM_KAFKA_SASL_PASSWORD"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_that_talks_to_kafka_mounts_the_same_files_read_only(overlay: str) -> None:
    docs = render(overlay)
    settings = worker_settings(docs)
    named_files = [settings[name] for name in KAFKA_FILE_SETTINGS if settings.get(name)]
    for container in cartloom_containers(docs):
        for path in named_files:
            mount, volume = secret_mount(docs, container, path)
            assert mount["readOnly"] is True, container["name"]
            assert volume["secret"]["secretName"] == "cartloom-kafka-tls"
            # Readable by the pod's group (fsGroup) only, not the world.
            assert volume["secret"]["defaultMode"] & 0o007 == 0
        env = {e["name"]: e for e in container["env"]}
        for secret in ("CARTLOOM_KAFKA_SASL_PASSWORD", "CARTLOOM_KAFKA_SSL_KEY_PASSWORD"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["key"] == secret, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_secured_settings_build_a_connection(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    for container in cartloom_containers(docs):
        settings = settings_from(kubernetes_env(docs, container), monkeypatch)
        kafka = kafka_connection(settings)
        assert kafka.protocol == worker_settings(docs)["CARTLOOM_KAFKA_SECURITY_PROTOCOL"]
        assert kafka.protocol != "PLAINTEXT", f"{overlay} shows a secured cluster"


def test_the_overlays_show_tls_client_certificates_and_sasl() -> None:
    shown = {
        (
            worker_settings(render(o))["CARTLOOM_KAFKA_SECURITY_PROTOCOL"],
            "CARTLOOM_KAFKA_SSL_CERTFILE" in worker_settings(render(o)),
        )
        for o in OVERLAYS
    }
    assert ("SSL", True) in shown, "an overlay with TLS client certificates"
    assert any(protocol == "SASL_SSL" for protocol, _ in shown), "an overlay with SASL"


def test_the_secured_overlays_never_ship_kafka_secrets() -> None:
    for overlay in OVERLAYS:
        for secret in kinds(render(overlay), "Secret"):
            data = {**secret.get("data", {}), **secret.get("stringData", {})}
            assert secret["metadata"]["name"] != "cartloom-kafka-tls"
            assert not {k for k in data if k.startswith("CARTLOOM_KAFKA_")}, overlay


def compose_env_file(tmp_path: Path, lines: dict[str, str]) -> Path:
    path = tmp_path / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
    return path


def test_compose_mounts_the_kafka_files_read_only_into_every_cartloom_service() -> None:
    services = compose_config()["services"]
    default = f"{ROOT}/deploy/compose/kafka-certs:/etc/cartloom/kafka:ro"
    for name in ("init", "worker", "webhooks", "simulator", "cli"):
        assert default in volume_specs(services[name]), name
    assert (ROOT / "deploy/compose/kafka-certs/README.md").exists()


def test_compose_reaches_a_secured_cluster_of_your_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = stand_in_pki()
    certs = pki.ca.parent
    env_file = compose_env_file(
        tmp_path,
        {
            "KAFKA_BROKER_URL": "kafka://broker-1.example.com:9096",
            "KAFKA_CERTS_DIR": str(certs),
            "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CARTLOOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "CARTLOOM_KAFKA_SASL_USERNAME": "cartloom",
            "CARTLOOM_KAFKA_SASL_PASSWORD": "from-dot-env",
            "CARTLOOM_KAFKA_SSL_CAFILE": f"/etc/cartloom/kafka/{pki.ca.name}",
        },
    )
    services = compose_config(env_file)["services"]
    for name in ("worker", "webhooks", "init", "cli"):
        env: dict[str, Any] = services[name]["environment"]
        assert env["CARTLOOM_BROKER_URL"] == "kafka://broker-1.example.com:9096"
        assert env["CARTLOOM_KAFKA_SASL_PASSWORD"] == "from-dot-env"
        assert f"{certs}:/etc/cartloom/kafka:ro" in volume_specs(services[name])
    # As a container would see it: the CA file at its mounted path.
    container_env = {k: v for k, v in services["worker"]["environment"].items() if v is not None}
    container_env["CARTLOOM_KAFKA_SSL_CAFILE"] = str(certs / pki.ca.name)
    settings = settings_from(container_env, monkeypatch)
    assert isinstance(settings, Settings)
    assert kafka_connection(settings).protocol == "SASL_SSL"
