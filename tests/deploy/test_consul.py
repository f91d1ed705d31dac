"""deploy/consul (optional): registration checks the real endpoints; settings stay out of Consul."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from cartloom.core.settings import Settings
from tests.deploy.manifests import K8S, ROOT, tool

CONSUL = ROOT / "deploy" / "consul"


def test_service_definition_checks_health_and_readiness_on_the_web_port() -> None:
    service = json.loads((CONSUL / "cartloom-service.json").read_text())["service"]
    port = Settings.model_fields["web_port"].default
    assert service["port"] == port
    urls = {check["http"] for check in service["checks"]}
    assert urls == {f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/readyz"}


def test_consul_is_not_a_second_source_of_settings() -> None:
    for path in CONSUL.iterdir():
        assert "CARTLOOM_" not in path.read_text(), f"{path.name}: settings live in env only"


def test_the_catalog_sync_patch_applies_to_an_overlay(tmp_path: Path) -> None:
    shutil.copy(CONSUL / "service-sync-patch.yaml", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "prod", tmp_path)],
                "patches": [{"path": "service-sync-patch.yaml"}],
            }
        )
    )
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deprecated" not in result.stderr, result.stderr
    services = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Service"]
    (web,) = (s for s in services if s["metadata"]["name"] == "cartloom-web")
    assert web["metadata"]["annotations"]["consul.hashicorp.com/service-sync"] == "true"
    assert web["metadata"]["namespace"] == "cartloom"
