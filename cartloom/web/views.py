"""Every worker's web views: live queries per table, schemas, health, readiness and metrics.

Importing this module (it is in ``cartloom.app.AUTODISCOVER``) registers the pages and
installs Faust's Prometheus monitor. A live query is registered for each queryable table
that :mod:`cartloom.tables` declares; see :mod:`cartloom.web.queries` for the routing.
"""

from __future__ import annotations

from typing import Any

from cartloom import tables
from cartloom.app import app, settings
from cartloom.metrics import WORKER_INFO
from cartloom.observability import install_prometheus_monitor
from cartloom.web import discovery
from cartloom.web.health import BrokerProbe, register_health
from cartloom.web.queries import LiveQuery, register_live_query
from cartloom.web.schemas import register_schemas

#: (path, table name in cartloom.tables, path parameter, entity, 404 message). Any text:
#: aiohttp's default parameter pattern refuses ``{``, ``}``, ``/`` and line breaks, which
#: ids may hold (an order ``a{b`` was stored and could not be read; found by fuzzing,
#: tests/integration/test_fuzz_http.py).
QUERYABLE = [
    (r"/orders/{order_id:[\s\S]+}", "order_by_id", "order_id", "order", "order not found"),
    (r"/inventory/{sku:[\s\S]+}", "inventory_by_sku", "sku", "inventory", "sku not found"),
    (
        r"/products/{product_id:[\s\S]+}",
        "product_by_id",
        "product_id",
        "product",
        "product not found",
    ),
]


def live_queries() -> dict[str, LiveQuery]:
    """The live queries of the tables that exist, by path (a table not declared is skipped)."""
    found: dict[str, LiveQuery] = {}
    for path, table_name, param, entity, not_found in QUERYABLE:
        table: Any = getattr(tables, table_name, None)
        if table is not None:
            found[path] = LiveQuery(table, param, entity, not_found)
    return found


install_prometheus_monitor(app)
WORKER_INFO.info({"app_id": settings.app_id})
#: A rebalance longer than this makes the worker unready (an ordinary one does not).
REBALANCE_STUCK_AFTER = max(30.0, 3 * settings.broker_rebalance_timeout)
register_health(app, BrokerProbe(settings.bootstrap_servers), REBALANCE_STUCK_AFTER)
#: Registered by importing it (``@app.service``); named here so the import is explicit.
TARGET_FILE_SERVICE = discovery.PrometheusTargetFile
VIEWS = {path: register_live_query(app, path, q, settings) for path, q in live_queries().items()}
register_schemas(app)  # public: no bearer token
