"""Fixtures of the deployment checks: one embedded local stack for the two that need servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a generous deadline."""
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def deploy_stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-stack")


@pytest.fixture(scope="session")
def deploy_stack(deploy_stack_dir: Path) -> Iterator[dict[str, str]]:
    """`python -m devstack up` on free ports; yields the settings it wrote (CARTLOOM_*, AWS_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    cli = [sys.executable, "-m", "devstack"]
    started = run([*cli, "up", "--state-dir", str(deploy_stack_dir)], base)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        values = dotenv_values(deploy_stack_dir / "dev.env")
        yield {k: v for k, v in values.items() if v is not None}
    finally:
        run([*cli, "down", "--state-dir", str(deploy_stack_dir)], base)
