"""A process that only receives Shopify's webhooks: ``cartloom shopify ingress``.

Every worker answers ``POST /webhooks/shopify`` too, but there the receiver shares one
event loop with the agents, and an agent handling a batch of a thousand order events
does not yield for tens of milliseconds: every delivery that arrives meanwhile waits that
long. Shopify gives a delivery 5 seconds, so this is fine for a small shop; at thousands
of deliveries a second the tail latency belongs to the agents, not the receiver. The
ingress process runs the same :class:`~cartloom.shopify.receiver.WebhookReceiver` alone:

- on aiohttp's low-level server (no router, no middlewares, no application: it serves
  four fixed paths, and the router cost a tenth of a delivery),
- with its own batching producer (acks=all; 200 only once the broker has the record),
- on the tuned garbage collector of :mod:`cartloom.core.runtime`.

It holds no state, so replicas scale with the delivery rate (``deploy/k8s``). Paths:
``POST /webhooks/shopify``; ``GET /healthz`` (the process runs); ``GET /readyz`` (the
producer is connected: 200, else 503); ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cartloom.shopify.receiver import WebhookReceiver
from cartloom.stream.web_guards import ConnectionLimits, cap_connections

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/shopify"
RECONNECT_SECONDS = 3.0

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json(status: int, body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Ingress:
    """The request handler of the ingress server: routes the four paths by hand."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self._routes: dict[str, tuple[str, Handler]] = {
            WEBHOOK_PATH: ("POST", self._webhook),
            "/healthz": ("GET", self._healthz),
            "/readyz": ("GET", self._readyz),
            "/metrics": ("GET", self._metrics),
        }

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; unknown paths get 404 and known ones 405 for other methods."""
        route = self._routes.get(request.path)
        if route is None:
            return _json(404, {"error": f"no such path {request.path}"})
        method, handler = route
        if request.method != method:
            response = _json(405, {"error": f"use {method}"})
            response.headers["Allow"] = method
            return response
        return await handler(request)

    async def _webhook(self, request: web.BaseRequest) -> web.StreamResponse:
        answer = await self.receiver.handle(request)
        response = web.Response(
            body=answer.json, status=answer.status, content_type="application/json"
        )
        if answer.closes_connection:
            response.force_close()
        return response

    async def _healthz(self, _: web.BaseRequest) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def _readyz(self, _: web.BaseRequest) -> web.StreamResponse:
        if self.receiver.enqueuer.connected:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "producer not connected"})

    async def _metrics(self, _: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


async def serve(
    receiver: WebhookReceiver,
    host: str,
    port: int,
    limits: ConnectionLimits,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain: stop listening, flush, disconnect."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # No access log: at thousands of deliveries a second it would be the largest cost per
    # request; the receiver's counters and histogram say what happened to each delivery.
    server = web.Server(Ingress(receiver), access_log=None, **limits.server_options)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    cap_connections(server, limits.max_connections, "ingress")
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
        log.info("webhook ingress listening on %s:%s", host, port)
        connecting = asyncio.create_task(_connect(receiver, stopping))
        await stopping.wait()
        connecting.cancel()
        log.info("stopping: draining in-flight deliveries")
    finally:
        await runner.cleanup()  # stops listening and waits for the requests in hand
        await receiver.enqueuer.stop()


async def _connect(receiver: WebhookReceiver, stopping: asyncio.Event) -> None:
    """Connect the producer, trying again every few seconds until the broker takes it.

    Until then ``/readyz`` answers 503, so no traffic is routed here and no delivery would
    connect it: the ingress has to keep trying by itself.
    """
    while not stopping.is_set() and not receiver.enqueuer.connected:
        try:
            await receiver.enqueuer.start()
        except Exception as exc:
            log.warning("producer not connected yet (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RECONNECT_SECONDS)
