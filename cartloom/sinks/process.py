"""The sinks in a process of their own: ``cartloom sink``.

A worker runs the materialisers beside its agents (``CARTLOOM_SINKS_ENABLED``, the local
stack's default). Where the stores are the slow part, they are better scaled apart from
the order workers: run the workers with ``CARTLOOM_SINKS_ENABLED=false`` and as many
``cartloom sink`` processes as the sink lag asks for. Each store's materialiser reads the
tables' changelogs in the store's own consumer group, so sink processes (and workers with
sinks on) share the partitions between them; adding one is a rebalance of that group only.

Paths on ``CARTLOOM_SINK_PORT``: ``GET /healthz`` (the process runs), ``GET /readyz`` (every
store's materialiser is running, not waiting to restart: 200, else 503 naming the stores),
``GET /metrics`` (Prometheus: ``cartloom_sink_*`` among them). SIGTERM or SIGINT lets each
materialiser finish and commit its batch in hand, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cartloom.core.settings import Settings
from cartloom.core.topology import Topology
from cartloom.sinks.runner import SinkSupervisor

log = logging.getLogger(__name__)


def _json(status: int, body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def sink_app(supervisor: SinkSupervisor, stores: list[str]) -> web.Application:
    """The three GET paths of a sink process."""

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        waiting = sorted(set(stores) - supervisor.running)
        if waiting:
            return _json(503, {"status": "not running", "stores": waiting})
        return _json(200, {"status": "ready", "stores": sorted(stores)})

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_sinks(settings: Settings, topology: Topology, stores: list[str]) -> None:
    """Run the stores' materialisers and the three paths until SIGTERM or SIGINT."""
    supervisor = SinkSupervisor(settings, topology, stores)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop)
    runner = web.AppRunner(sink_app(supervisor, stores), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_bind, settings.sink_port)
    try:
        await site.start()
        log.info(
            "sinks %s listening on %s:%s", ", ".join(stores), settings.web_bind, settings.sink_port
        )
        await supervisor.run()
        log.info("sinks stopped: every batch in hand written and committed")
    finally:
        await runner.cleanup()
