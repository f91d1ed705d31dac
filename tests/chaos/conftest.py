"""Fixtures of the fault suite: a fresh local stack per scenario, its scale, seed and report.

Every scenario gets a broker of its own: the saga's internal topics have fixed names (see
docs/operations.md), so CartLoom apps sharing a broker, even with different app ids,
would read each other's commands. Starting the stack takes about two seconds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.stack import StackState
from tests.chaos.scenario import RESULTS_DIR, SCALES, SUMMARIES, Scale
from tests.harness import start_local_stack, stop_local_stack


def chaos_scale(config: pytest.Config) -> Scale:
    return SCALES[str(config.getoption("--chaos-scale"))]


def chaos_runs(config: pytest.Config) -> int:
    runs = config.getoption("--chaos-runs")
    return int(runs) if runs else chaos_scale(config).runs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``chaos_run``: the SIGKILL scenarios run this many times in a row (5 at full scale)."""
    if "chaos_run" in metafunc.fixturenames:
        runs = chaos_runs(metafunc.config)
        metafunc.parametrize("chaos_run", range(1, runs + 1), ids=lambda n: f"run{n}")


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> Scale:
    return chaos_scale(pytestconfig)


@pytest.fixture(scope="session")
def base_seed(pytestconfig: pytest.Config) -> int:
    """The seed every scenario's schedule derives from (printed: rerun with --chaos-seed)."""
    seed = pytestconfig.getoption("--chaos-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    print(f"\n[chaos] base seed {seed} (rerun with --chaos-seed={seed})", flush=True)
    return int(seed)


@pytest.fixture
async def chaos_stack(tmp_path: Path, pytestconfig: pytest.Config) -> AsyncIterator[StackState]:
    """A local stack of the scenario's own, stopped whatever happens.

    With ``--chaos-dashboard`` it runs Prometheus too, and the workers register with it.
    """
    state_dir = tmp_path / "stack"
    with_prometheus = pytestconfig.getoption("--chaos-dashboard") is not None
    try:
        yield await start_local_stack(state_dir, with_prometheus=with_prometheus)
    finally:
        stop_local_stack(state_dir)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The summary line of every scenario run, after the test results."""
    if SUMMARIES:
        terminalreporter.section("chaos scenarios")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"results: {RESULTS_DIR}")
