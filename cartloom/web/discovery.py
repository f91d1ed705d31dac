"""Self-registration for Prometheus ``file_sd``: each worker writes its own target file.

With ``CARTLOOM_PROMETHEUS_TARGETS_DIR`` set (``python -m devstack up --with-prometheus`` sets it
in ``dev.env``), a worker writes ``<dir>/<app_id>-<host>-<port>.json`` when it starts and
removes it when it stops, so a Prometheus watching ``<dir>/*.json`` finds every worker
without configuration. A worker that crashes leaves its file behind: Prometheus then shows
``up == 0`` for it, which is what the ``CartLoomWorkerDown`` alert is for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mode

from cartloom.stream.app import app, settings


def target_document(host: str, port: int) -> list[dict[str, Any]]:
    """The file_sd document naming one worker's ``/metrics`` address.

    No target labels: the worker's app id comes from its own ``cartloom_worker_info``
    metric, as it does under Kubernetes and docker-compose discovery.
    """
    return [{"targets": [f"{host}:{port}"], "labels": {}}]


def target_path(directory: Path, host: str, port: int, app_id: str) -> Path:
    """Where the worker ``host:port`` of ``app_id`` registers itself."""
    return directory / f"{app_id}-{host}-{port}.json"


def write_target(path: Path, document: list[dict[str, Any]]) -> None:
    """Write atomically (Prometheus may read at any moment): temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)


@app.service
class PrometheusTargetFile(mode.Service):
    """Registers this worker in the file_sd directory while it runs (no-op if unset)."""

    def _path(self) -> Path | None:
        directory = settings.prometheus_targets_dir
        if directory is None:
            return None
        return target_path(directory, settings.web_host, settings.web_port, settings.app_id)

    async def on_started(self) -> None:
        """Write the target file once the web server listens."""
        path = self._path()
        if path is not None:
            doc = target_document(settings.web_host, settings.web_port)
            write_target(path, doc)

    async def on_stop(self) -> None:
        """Remove the target file: a cleanly stopped worker is not 'down'."""
        path = self._path()
        if path is not None:
            path.unlink(missing_ok=True)
