"""Web views: live table queries, health, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any, cast

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cartloom.app import app
from cartloom.tables import order_by_id


@app.page("/orders/{order_id}")
class OrderQuery(View):
    """``GET /orders/{order_id}``: the order's current view, or 404."""

    @app.table_route(table=order_by_id, match_info="order_id")  # type: ignore[arg-type]
    async def get(self, request: Request, order_id: str) -> Response:
        """Answer from the table partition this worker owns (Faust forwards otherwise)."""
        view: Any = order_by_id.get(order_id)
        if view is None:
            return self.json({"error": "order not found", "order_id": order_id}, status=404)
        return self.json(view)


@app.page("/healthz")
class Health(View):
    """``GET /healthz``: 200 while the process and its event loop are alive."""

    async def get(self, request: Request) -> Response:
        """Liveness: reaching this code is the whole check."""
        return self.json({"status": "ok"})


@app.page("/readyz")
class Readiness(View):
    """``GET /readyz``: 200 once table recovery has finished and no rebalance is running."""

    async def get(self, request: Request) -> Response:
        """Readiness as a Kubernetes probe expects it: 503 until the worker can serve."""
        recovered = cast(Any, app.tables).recovery.completed.is_set()
        rebalancing = bool(app.rebalancing)
        ready = recovered and not rebalancing
        body = {"ready": ready, "recovered": recovered, "rebalancing": rebalancing}
        return self.json(body, status=200 if ready else 503)


@app.page("/metrics")
class Metrics(View):
    """``GET /metrics``: every CartLoom metric in Prometheus text format."""

    async def get(self, request: Request) -> Response:
        """Render the default registry."""
        return self.bytes(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
