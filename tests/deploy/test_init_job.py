"""The compose init job's own script, run against real servers (the embedded local stack)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cartloom.sinks.base import KEY_ATTRIBUTE
from tests.deploy.conftest import run
from tests.deploy.manifests import compose_config, topology

pytestmark = pytest.mark.integration


@pytest.fixture
def init_env(deploy_stack: dict[str, str]) -> dict[str, str]:
    """The stack's settings with `cartloom` on PATH, as inside the image."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    # `python -m devstack up` prepares its own app's topics and tables: a fresh app id and
    # table prefix leave changelogs and tables for the init job to create.
    return {
        **env,
        **deploy_stack,
        "CARTLOOM_APP_ID": "initjob",
        "CARTLOOM_TABLE_PREFIX": "initjob-",
    }


def init_script() -> list[str]:
    """The init service's entry point and command, as the container would run them."""
    init = compose_config()["services"]["init"]
    # `docker compose config` escapes `$` as `$$`; the container sees a single `$`.
    return [part.replace("$$", "$") for part in init["entrypoint"] + init["command"]]


def test_init_job_creates_every_topic_and_table_and_can_run_again(init_env: dict[str, str]) -> None:
    first = run(init_script(), init_env)
    assert first.returncode == 0, first.stdout + first.stderr
    created = first.stdout
    for entity in KEY_ATTRIBUTE:
        assert f"initjob-{entity}" in created, created
    for table in topology().tables.values():
        assert table.changelog_topic("initjob") in created, created

    check = run([sys.executable, "-m", "cartloom", "topics", "check"], init_env)
    assert check.returncode == 0, check.stdout + check.stderr

    again = run(init_script(), init_env)  # a restarted init job changes nothing
    assert again.returncode == 0, again.stdout + again.stderr
    assert "all topics exist" in again.stdout
    assert "all tables exist" in again.stdout
