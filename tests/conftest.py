"""Shared test configuration: nothing here starts a server (see tests/integration/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The unit tests import cartloom.stream.app, which reads settings once; keep them independent of
# whatever CARTLOOM_* variables the developer's shell happens to hold.
for _name in [n for n in os.environ if n.startswith("CARTLOOM_")]:
    del os.environ[_name]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the fault suite (tests/chaos); registered here so every run knows them."""
    group = parser.getgroup("chaos", "fault suite (tests/chaos, make chaos)")
    group.addoption(
        "--chaos-scale",
        choices=("short", "full"),
        default=os.environ.get("CHAOS_SCALE", "short"),
        help="short (inside make test) or full (make chaos); default $CHAOS_SCALE or short",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None,
        help="base seed of the fault schedules and orders; default $CHAOS_SEED, else random",
    )
    group.addoption(
        "--chaos-dashboard",
        type=Path,
        default=Path(os.environ["CHAOS_DASHBOARD"]) if os.environ.get("CHAOS_DASHBOARD") else None,
        help="also run Prometheus and draw the dashboard of the burst scenario to this PNG",
    )
    group.addoption(
        "--chaos-runs",
        type=int,
        default=None,
        help="runs in a row of each SIGKILL scenario; default 1 short, 5 full",
    )
