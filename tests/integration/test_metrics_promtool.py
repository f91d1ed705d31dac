"""Prometheus' own tools on CartLoom's config and rules, and a real Prometheus scraping a worker."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from cartloom.web.discovery import target_document, target_path, write_target
from devstack.processes import is_running, stop
from devstack.prometheus import local_config, start_prometheus, write_config
from devstack.stack import ENV_FILE, down, up
from tests.harness import WorkerProcess, eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "promtool-is-missing-run-sudo-make-test-tools"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", "rules/cartloom-alerts.yml", "rules/cartloom-recording.yml")
    assert "SUCCESS: 9 rules found" in out
    assert "SUCCESS: 5 rules found" in out


def test_promtool_unit_tests_of_the_alerts() -> None:
    assert "SUCCESS" in promtool("test", "rules", "tests/cartloom-alerts.test.yml")


def test_promtool_check_config_of_the_shipped_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 2 rule files found" in out


def test_promtool_check_config_of_the_dev_stack_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, 9999)
    out = promtool("check", "config", str(config), cwd=tmp_path)
    assert "SUCCESS: 2 rule files found" in out
    assert yaml.safe_load(config.read_text()) == local_config(config.parent / "targets", 9999)


async def api(port: int, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        assert r.status == 200
        return (await r.json())["data"]


async def test_real_prometheus_scrapes_a_worker_and_loads_the_rules(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    server, env = await start_prometheus(tmp_path)
    try:
        targets = Path(env["CARTLOOM_PROMETHEUS_TARGETS_DIR"])
        write_target(
            target_path(targets, "127.0.0.1", worker.port, "cartloom"),
            target_document("127.0.0.1", worker.port),
        )

        async def scraped() -> bool:
            active = (await api(server.port, "/api/v1/targets"))["activeTargets"]
            return any(
                t["labels"]["instance"] == f"127.0.0.1:{worker.port}" and t["health"] == "up"
                for t in active
            )

        try:
            await eventually(scraped, timeout=90, what="worker scraped by Prometheus")
        except AssertionError:
            raise AssertionError(
                f"{await api(server.port, '/api/v1/targets')}\n{Path(server.log).read_text()}"
            ) from None

        async def series(query: str) -> list[Any] | None:
            result = (await api(server.port, f"/api/v1/query?query={query}"))["result"]
            return result or None

        ready = await eventually(lambda: series("cartloom_worker_ready"), what="ready series")
        assert ready[0]["value"][1] == "1"
        info = await eventually(lambda: series("cartloom_worker_info"), what="info series")
        assert info[0]["metric"]["app_id"] == "cartloom"
        assert await eventually(lambda: series("faust_messages_received_total"), what="faust")

        groups = (await api(server.port, "/api/v1/rules"))["groups"]
        assert {g["name"] for g in groups} == {"cartloom-alerts", "cartloom-recording"}
        for group in groups:
            for rule in group["rules"]:
                assert rule["health"] in ("ok", "unknown"), rule
    finally:
        stop(server)


async def test_dev_up_with_prometheus_starts_it_and_points_workers_at_it(tmp_path: Path) -> None:
    state, started = await up(tmp_path, with_prometheus=True)
    try:
        assert started
        assert set(state.servers) == {"broker", "redis", "dynamodb", "prometheus"}
        targets = Path(state.env["CARTLOOM_PROMETHEUS_TARGETS_DIR"])
        assert targets == (tmp_path / "prometheus" / "targets").resolve()
        assert f"CARTLOOM_PROMETHEUS_TARGETS_DIR={targets}" in (tmp_path / ENV_FILE).read_text()
        prometheus = state.servers["prometheus"]
        config = (await api(prometheus.port, "/api/v1/status/config"))["yaml"]
        assert str(targets / "*.json") in config
        again, started_again = await up(tmp_path, with_prometheus=True)
        assert not started_again
        assert again.servers["prometheus"].pid == prometheus.pid
    finally:
        stopped = down(tmp_path)
    assert "prometheus" in stopped
    assert not is_running(prometheus)
