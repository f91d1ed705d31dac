"""Changelog-backed Faust tables, each co-partitioned with its source topic by construction.

Table values are the JSON documents that are materialised to DynamoDB and Redis, so the
sinks read the changelog topics directly (see ``docs/`` and :mod:`cartloom.sinks`).
"""

from __future__ import annotations

from typing import Any

import faust

from cartloom.app import app, topology


def declared_table(name: str) -> faust.types.TableT[str, Any]:
    """The table ``name`` from ``topics.yaml``, with its source topic's partition count."""
    spec = topology.tables[name]
    return app.Table(  # a RawKeyTable (see cartloom.faust_types): keys are raw bytes
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
