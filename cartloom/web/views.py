"""Every worker's web views: live queries per table, schemas, the API document, health, metrics.

Importing this module (it is in ``cartloom.stream.app.AUTODISCOVER``) registers the pages and
installs Faust's Prometheus monitor. A live query is registered for each queryable resource
(:data:`cartloom.web.resources.RESOURCES`) whose table :mod:`cartloom.stream.tables` declares; it
answers the resource's public view (see :mod:`cartloom.web.queries` for the routing).
"""

from __future__ import annotations

from typing import Any

from cartloom.core.metrics import WORKER_INFO
from cartloom.stream import tables
from cartloom.stream.app import app, settings
from cartloom.stream.observability import install_prometheus_monitor
from cartloom.web import discovery
from cartloom.web.health import BrokerProbe, register_health
from cartloom.web.openapi import register_openapi
from cartloom.web.queries import LiveQuery, register_live_query
from cartloom.web.resources import RESOURCES
from cartloom.web.schemas import register_schemas


def live_queries() -> dict[str, LiveQuery]:
    """The live queries of the tables that exist, by route (a table not declared is skipped)."""
    found: dict[str, LiveQuery] = {}
    for resource in RESOURCES:
        table: Any = getattr(tables, resource.table, None)
        if table is not None:
            found[resource.route] = LiveQuery(
                table, resource.param, resource.entity, resource.not_found, resource.view
            )
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
register_openapi(app)  # public: no bearer token
