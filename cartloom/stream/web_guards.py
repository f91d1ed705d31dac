"""Limits every CartLoom HTTP server puts on its connections: slow or too many clients.

aiohttp gives a connection as long as it likes to send a request head (its keep-alive
timer, 3,630 s by default, is the only bound) and takes any number of connections. A few
slow clients could hold a receiver's sockets and memory. Both servers (the worker's Faust
web server and ``cartloom shopify ingress``) therefore:

- close a connection that has not sent a whole request head within ``header_timeout``
  seconds of connecting or of its last answer (aiohttp's keep-alive timer, shortened: it
  fires while a head is still incomplete);
- answer 503 and close at once any connection over ``max_connections`` per process, so a
  flood meets a fast refusal, not a queue (counted in
  ``cartloom_http_connections_refused_total``).

The body's deadline is the webhook receiver's own (``read_body``): 408.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from faust.web.drivers import aiohttp as faust_aiohttp

from cartloom.core import metrics
from cartloom.core.settings import Settings

#: The whole answer to a connection over the limit: written raw, before any request.
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: 1\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 35\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error": "too many connections"}\r\n'
)


#: Longest drain of a half-read body after its answer, before the connection closes.
LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a request head may take, and how many connections a process keeps."""

    header_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits the settings give (one home: ``CARTLOOM_WEB_*``)."""
        return cls(settings.web_header_timeout_seconds, settings.web_max_connections)

    @property
    def server_options(self) -> dict[str, Any]:
        """Options of aiohttp's request handler that apply the deadlines.

        ``lingering_time``: after answering a request whose body was left half-read (408),
        aiohttp drains the rest for this long before closing (10 s by default).
        """
        return {
            "keepalive_timeout": self.header_timeout,
            "lingering_time": min(LINGER_SECONDS, self.header_timeout),
        }


def cap_connections(server: web.Server, limit: int, name: str) -> None:
    """Make ``server`` refuse connections over ``limit`` with a 503 and close them.

    Wraps the server's ``connection_made`` (called by each new connection's handler): the
    connection is registered first, so the count includes it, and closing it runs the
    handler's normal ``connection_lost``. Replaces a public method of aiohttp's ``Server``
    on the instance; tests/integration/test_webhook_ingress.py holds the behaviour.
    """
    registered = server.connection_made
    refused = metrics.labelled(metrics.HTTP_CONNECTIONS_REFUSED, name)

    def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        registered(handler, transport)
        if len(server.connections) > limit:
            refused.inc()
            transport.write(BUSY_ANSWER)
            # Closed on the next turn of the loop: the handler's task, created right after
            # this returns, must still find its server (aiohttp asserts it does).
            asyncio.get_running_loop().call_soon(handler.force_close)

    server.connection_made = connection_made  # type: ignore[method-assign]


class GuardedWeb(faust_aiohttp.Web):
    """Faust's aiohttp web server with CartLoom's :class:`ConnectionLimits` applied.

    Faust builds its ``AppRunner`` without server options and starts it in one step; this
    driver rebuilds the runner with the head deadline and caps the connections once the
    server exists. The private ``_runner`` it replaces is pinned by the live tests in
    tests/integration/test_live_queries.py (a silent connection is closed, one over the
    cap is answered 503).
    """

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits: ConnectionLimits | None = getattr(app, "connection_limits", None)
        if self.limits is not None:
            self._runner = web.AppRunner(
                self.web_app, access_log=None, **self.limits.server_options
            )

    async def start_server(self) -> None:
        """Start the server as Faust does, with the connection cap in place first."""
        await self._runner.setup()
        if self.limits is not None and self._runner.server is not None:
            cap_connections(self._runner.server, self.limits.max_connections, "worker")
        site = self._create_site()
        await site.start()
