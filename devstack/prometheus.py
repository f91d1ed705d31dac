"""Debian's Prometheus for the local stack (``python -m devstack up --with-prometheus``).

Prometheus runs on a free loopback port with its configuration, data and target files in
``<state dir>/prometheus/``. It loads CartLoom's own alert and recording rules from
``deploy/prometheus/rules`` and finds the workers through ``file_sd``: every worker started
with the stack's ``dev.env`` writes its own target file into ``targets/`` (see
:mod:`cartloom.web.discovery`), so workers started later are scraped without a restart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import yaml

from devstack.processes import (
    ServerProcess,
    StackError,
    free_port,
    spawn,
    stop,
    wait_until,
)

#: CartLoom's rules, beside the package in a source checkout (absent from a wheel install).
RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules"
TARGETS_ENV = "CARTLOOM_PROMETHEUS_TARGETS_DIR"
SCRAPE_INTERVAL = "5s"


def prometheus_dir(state_dir: Path) -> Path:
    """Where the local Prometheus keeps its config, data and worker target files."""
    return (state_dir / "prometheus").resolve()


def local_config(
    targets_dir: Path, own_port: int, rules_dir: Path = RULES_DIR
) -> dict[str, object]:
    """The local Prometheus configuration: file_sd for workers, CartLoom's rules if present."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_dir / "*.yml")] if rules_dir.is_dir() else [],
        "scrape_configs": [
            {
                "job_name": "cartloom",
                "metrics_path": "/metrics",
                "file_sd_configs": [
                    {"files": [str(targets_dir / "*.json")], "refresh_interval": SCRAPE_INTERVAL}
                ],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{own_port}"]}]},
        ],
    }


def write_config(state_dir: Path, port: int) -> Path:
    """Write ``prometheus.yml`` for ``port``; return its path (targets/ is created too)."""
    base = prometheus_dir(state_dir)
    targets = base / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    path = base / "prometheus.yml"
    path.write_text(yaml.safe_dump(local_config(targets, port), sort_keys=False))
    return path


def prometheus_argv(binary: str, config: Path, port: int) -> list[str]:
    """Command line of the local Prometheus (loopback only, one day of data)."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]


async def _ready(port: int) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/-/ready") as response,
    ):
        return response.status == 200


async def start_prometheus(state_dir: Path) -> tuple[ServerProcess, dict[str, str]]:
    """Start Prometheus for the stack in ``state_dir``; return it and the env workers need."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError(
            "prometheus is not installed: `sudo make test-tools` (scripts/system-deps.sh) or "
            "`sudo apt-get install prometheus`"
        )
    port = free_port()
    config = write_config(state_dir, port)
    server = spawn("prometheus", prometheus_argv(binary, config, port), state_dir / "logs", port)
    try:
        await wait_until(server, lambda: _ready(port), within=60.0)
    except BaseException:
        stop(server)
        raise
    return server, {TARGETS_ENV: str(config.parent / "targets")}
