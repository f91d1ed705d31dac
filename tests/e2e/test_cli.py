"""The CLI as a user runs it: ``cartloom dev up|down|status`` and ``cartloom topics``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cartloom.devstack.processes import ServerProcess, is_running

pytestmark = pytest.mark.integration


def cartloom(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    return subprocess.run(
        [sys.executable, "-m", "cartloom", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def recorded_servers(state_dir: Path) -> list[ServerProcess]:
    raw = json.loads((state_dir / "stack.json").read_text())
    return [ServerProcess(**server) for server in raw["servers"].values()]


def test_dev_up_and_down_twice_in_a_row(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    for _ in range(2):
        first = cartloom("dev", "up", "--state-dir", str(state_dir))
        assert first.returncode == 0, first.stderr
        assert "started" in first.stdout
        servers = recorded_servers(state_dir)
        assert {s.name for s in servers} == {"broker", "redis", "dynamodb"}
        assert all(is_running(s) for s in servers)
        env_file = (state_dir / "dev.env").read_text()
        assert f"CARTLOOM_BROKER_URL=kafka://127.0.0.1:{servers[0].port}" in env_file
        # The local query API is closed as a deployed one is; dev up says how to call it.
        (token,) = re.findall(r"^CARTLOOM_API_TOKEN=(\S{24,})$", env_file, re.M)
        assert f"Authorization: Bearer {token}" in first.stdout.replace("\n", "")

        again = cartloom("dev", "up", "--state-dir", str(state_dir))
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert recorded_servers(state_dir) == servers  # no second copy

        assert cartloom("dev", "status", "--state-dir", str(state_dir)).returncode == 0
        down = cartloom("dev", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stderr
        assert not any(is_running(s) for s in servers)
        assert not (state_dir / "dev.env").exists()
        assert cartloom("dev", "status", "--state-dir", str(state_dir)).returncode == 1


def test_down_without_a_stack_stops_nothing(tmp_path: Path) -> None:
    result = cartloom("dev", "down", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "nothing was running" in result.stdout


def test_topics_apply_then_check_reports_drift(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert cartloom("dev", "up", "--state-dir", str(state_dir)).returncode == 0
    try:
        env_file = str(state_dir / "dev.env")
        ok = cartloom("--env-file", env_file, "topics", "check")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "match topics.yaml" in ok.stdout

        drifted = tmp_path / "topics.yaml"
        drifted.write_text(
            "defaults: {partitions: 8, replication_factor: 1}\n"
            "topics:\n  orders: {partitions: 4}\n  brand.new: {}\n"
        )
        env = {"CARTLOOM_TOPICS_FILE": str(drifted)}
        bad = cartloom("--env-file", env_file, "topics", "check", env=env)
        assert bad.returncode == 1
        assert "orders: has 8 partitions, topics.yaml says 4" in bad.stdout
        assert "brand.new: missing" in bad.stdout

        applied = cartloom("--env-file", env_file, "topics", "apply", env=env)
        assert applied.returncode == 0, applied.stderr
        assert "brand.new" in applied.stdout
        after = cartloom("--env-file", env_file, "topics", "check", env=env)
        assert "brand.new" not in after.stdout
    finally:
        cartloom("dev", "down", "--state-dir", str(state_dir))


def test_invalid_setting_is_a_clear_error_not_a_traceback() -> None:
    result = cartloom("topics", "check", env={"CARTLOOM_WEB_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "CARTLOOM_WEB_PORT" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    """What `make demo` runs: orders reach DynamoDB and Redis, some reserved, some rejected."""
    state_dir = tmp_path / "stack"
    try:
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "cartloom",
                "dev",
                "demo",
                "--orders",
                "300",
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")},
                "COLUMNS": "200",
            },
            cwd=tmp_path,
            timeout=300,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        out = demo.stdout
        assert "6 malformed orders were sent on purpose" in out
        summary = next(line for line in out.splitlines() if line.startswith("orders by status:"))
        parts = summary.split(":", 1)[1].split("(")[0].split(",")
        counts = {status: int(n) for n, status in (part.split() for part in parts)}
        assert counts.get("received", 0) == 0, summary  # every valid order was resolved
        assert counts["reserved"] > 0 and counts["rejected"] > 0, summary  # demand > stock
        assert sum(counts.values()) == 294, summary
    finally:
        cartloom("dev", "down", "--state-dir", str(state_dir))
