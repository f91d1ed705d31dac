"""The compose init job's own script, run against real servers (the embedded local stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from cartloom.sinks.base import KEY_ATTRIBUTE
from tests.deploy.manifests import compose_config, topology

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A process environment pointing at a fresh local stack, with `cartloom` on PATH."""
    state_dir = tmp_path_factory.mktemp("init-stack")
    bin_dir = str(Path(sys.executable).parent)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    base["PATH"] = os.pathsep.join([bin_dir, base.get("PATH", os.defpath)])
    cli = [sys.executable, "-m", "cartloom"]
    started = run([*cli, "dev", "up", "--state-dir", str(state_dir)], base)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        values = dotenv_values(state_dir / "dev.env")
        env = {**base, **{k: v for k, v in values.items() if v is not None}}
        # `dev up` prepares its own app's topics and tables: a fresh app id and table prefix
        # leave changelogs and tables for the init job to create.
        yield {**env, "CARTLOOM_APP_ID": "initjob", "CARTLOOM_TABLE_PREFIX": "initjob-"}
    finally:
        run([*cli, "dev", "down", "--state-dir", str(state_dir)], base)


def init_script() -> list[str]:
    """The init service's entry point and command, as the container would run them."""
    init = compose_config()["services"]["init"]
    # `docker-compose config` escapes `$` as `$$`; the container sees a single `$`.
    return [part.replace("$$", "$") for part in init["entrypoint"] + init["command"]]


def test_init_job_creates_every_topic_and_table_and_can_run_again(
    stack_env: dict[str, str],
) -> None:
    first = run(init_script(), stack_env)
    assert first.returncode == 0, first.stdout + first.stderr
    created = first.stdout
    for entity in KEY_ATTRIBUTE:
        assert f"initjob-{entity}" in created, created
    for table in topology().tables.values():
        assert table.changelog_topic("initjob") in created, created

    check = run([sys.executable, "-m", "cartloom", "topics", "check"], stack_env)
    assert check.returncode == 0, check.stdout + check.stderr

    again = run(init_script(), stack_env)  # a restarted init job changes nothing
    assert again.returncode == 0, again.stdout + again.stderr
    assert "all topics exist" in again.stdout
    assert "all tables exist" in again.stdout
