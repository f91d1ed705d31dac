"""Faust handles on the Kafka topics: the only ``app.topic(...)`` calls, fed by ``topics.yaml``.

Input topics carry raw bytes: CartLoom decodes them itself, so a message that is not
valid JSON reaches the agent and goes to a dead-letter topic instead of failing inside
Faust's deserialiser, where it would be dropped.
"""

from __future__ import annotations

import faust

from cartloom.app import app, topology


def declared_topic(name: str) -> faust.TopicT:
    """The Faust topic for ``name`` with the partitions and replication of ``topics.yaml``."""
    spec = topology.topic(name)
    return app.topic(
        spec.name,
        partitions=spec.partitions,
        replicas=spec.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )


orders_topic = declared_topic("orders")
orders_dlq_topic = declared_topic("orders.dlq")
inventory_topic = declared_topic("inventory")
order_events_topic = declared_topic("order.events")

# Shopify (cartloom.shopify, cartloom.agents.shopify)
shopify_webhooks_topic = declared_topic("shopify.webhooks")
shopify_webhooks_dlq_topic = declared_topic("shopify.webhooks.dlq")
shopify_catalog_topic = declared_topic("shopify.catalog")
shopify_inventory_items_topic = declared_topic("shopify.inventory_items")
shopify_redactions_topic = declared_topic("shopify.redactions")
shopify_data_exports_topic = declared_topic("shopify.data_exports")
