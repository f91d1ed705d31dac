"""``/healthz`` (liveness), ``/readyz`` (readiness) and the one ``/metrics`` page.

Kubernetes meaning: liveness fails only when restarting the process would help (the event
loop no longer answers), so ``/healthz`` checks nothing external. Readiness says whether
this worker should receive traffic now: it has joined its group, received its partitions
and recovered their tables, is not stuck in a rebalance, and reached the broker within the
last few seconds. A broker outage makes every worker unready (no new traffic) without
restarting any of them; an ordinary rebalance does not (see :func:`readiness`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cartloom.core.metrics import WORKER_READY

#: A broker answer this recent counts as "reachable" (seconds).
BROKER_CHECK_TTL = 2.0
BROKER_CONNECT_TIMEOUT = 1.0


class BrokerProbe:
    """Is any bootstrap broker accepting TCP connections? Cached for a couple of seconds."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.addresses = [self._split(part) for part in bootstrap_servers.split(",") if part]
        self._checked_at = -BROKER_CHECK_TTL
        self._reachable = False
        self._lock = asyncio.Lock()

    @staticmethod
    def _split(address: str) -> tuple[str, int]:
        host, _, port = address.strip().rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port or 9092)

    async def reachable(self) -> bool:
        """True if a broker accepted a connection within the last ``BROKER_CHECK_TTL`` s."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= BROKER_CHECK_TTL:
                self._reachable = await self._connect_any()
                self._checked_at = time.monotonic()
            return self._reachable

    async def _connect_any(self) -> bool:
        for host, port in self.addresses:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), BROKER_CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                continue
            writer.close()
            return True
        return False


def rebalancing_seconds(app: Any) -> float:
    """How long the current rebalance has run (0 outside one), from CartLoom's monitor."""
    since = getattr(app.monitor, "rebalancing_since", None)
    if not app.rebalancing or since is None:
        return 0.0
    return max(0.0, time.monotonic() - float(since))


async def readiness(app: Any, probe: BrokerProbe, stuck_after: float) -> dict[str, Any]:
    """The readiness report; ``ready`` is the conjunction of the conditions it lists.

    ``recovered`` is the first assignment's table recovery (Faust sets it once the worker
    joined its group, received its partitions and replayed their changelogs). An ordinary
    rebalance does not make the worker unready: every worker rebalances at once, and
    dropping them all from the Service would refuse webhooks for nothing (live queries of a
    partition in motion answer 503 on their own). A rebalance running longer than
    ``stuck_after`` seconds does.
    """
    recovered = app.tables.recovery.completed.is_set()
    rebalancing_for = rebalancing_seconds(app)
    stuck = rebalancing_for > stuck_after
    broker = await probe.reachable()
    ready = recovered and not stuck and broker
    WORKER_READY.set(1 if ready else 0)
    return {
        "ready": ready,
        "recovered": recovered,
        "rebalancing": bool(app.rebalancing),
        "rebalancing_seconds": round(rebalancing_for, 1),
        "rebalance_stuck": stuck,
        "broker_reachable": broker,
        "active_partitions": len(app.assignor.assigned_actives()),
        "standby_partitions": len(app.assignor.assigned_standbys()),
    }


def register_health(app: Any, probe: BrokerProbe, stuck_after: float) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics`` to ``app``, and keep the ready gauge."""

    @app.page("/healthz")
    class Health(View):
        """``GET /healthz``: 200 while the process and its event loop are alive."""

        async def get(self, request: Request) -> Response:
            """Liveness: reaching this code is the whole check."""
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readiness(View):
        """``GET /readyz``: 200 when the worker can serve, 503 with the reasons otherwise."""

        async def get(self, request: Request) -> Response:
            """Readiness: recovered, partitions assigned, not stuck rebalancing, broker up."""
            body = await readiness(self.app, probe, stuck_after)
            return self.json(body, status=200 if body["ready"] else 503)

    @app.page("/metrics")
    class Metrics(View):
        """``GET /metrics``: Faust's and CartLoom's metrics, one registry, Prometheus text."""

        async def get(self, request: Request) -> Response:
            """Render the default registry (Faust's sensor and cartloom.core.metrics share it)."""
            await readiness(self.app, probe, stuck_after)
            headers = {"Content-Type": CONTENT_TYPE_LATEST}
            return self.bytes(generate_latest(REGISTRY), headers=headers)
