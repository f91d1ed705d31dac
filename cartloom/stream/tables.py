"""Changelog-backed Faust tables, each co-partitioned with its source topic by construction.

Table values are the JSON documents that are materialised to DynamoDB and Redis, so the
sinks read the changelog topics directly (see ``docs/`` and :mod:`cartloom.sinks`).
"""

from __future__ import annotations

from typing import Any

import faust

from cartloom.stream.app import app, topology


class ReseedAfterRecovery:
    """Tells a timer when to rebuild its in-memory schedule from ``table``.

    A timer's schedule (which orders fall due when) lives in this process only: the agent
    fills it as it changes ``table``. Rows this worker recovers from the changelog (at
    start, or for the partitions a rebalance gives it) never pass through the agent here,
    so after every recovery the schedule must be rebuilt from the table. Faust awaits the
    table's ``on_recover`` callbacks inside its recovery; the callback only raises a flag,
    and the timer, on its next tick, scans the table in its own task.
    """

    def __init__(self, table: faust.types.TableT[str, Any]) -> None:
        self._due = True  # the first tick seeds too
        table.on_recover(self._recovered)

    async def _recovered(self) -> None:
        self._due = True

    def due(self) -> bool:
        """True on the first call after each recovery (and the first call of all)."""
        due, self._due = self._due, False
        return due


def declared_table(name: str) -> faust.types.TableT[str, Any]:
    """The table ``name`` from ``topics.yaml``, with its source topic's partition count."""
    spec = topology.tables[name]
    return app.Table(  # a RawKeyTable (see cartloom.stream.faust_types): keys are raw bytes
        spec.name,
        default=None,
        partitions=topology.table_partitions(spec.name),
        key_type=str,
        help=spec.description,
    )


order_by_id = declared_table("order_by_id")
early_events_by_order = declared_table("early_events_by_order")  # events before their order
inventory_by_sku = declared_table("inventory_by_sku")
reservation_by_line = declared_table("reservation_by_line")

# Shopify (cartloom.agents.shopify)
shopify_delivery_by_resource = declared_table("shopify_delivery_by_resource")
product_by_id = declared_table("product_by_id")
sku_by_inventory_item = declared_table("sku_by_inventory_item")
