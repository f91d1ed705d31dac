"""Faust handles on the Kafka topics: the only ``app.topic(...)`` calls, fed by ``topics.yaml``.

Input topics carry raw bytes: CartLoom decodes them itself, so a message that is not
valid JSON reaches the agent and goes to a dead-letter topic instead of failing inside
Faust's deserialiser, where it would be dropped.
"""

from __future__ import annotations

import faust

from cartloom.stream.app import app, topology


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
orders_accepted_topic = declared_topic("orders.accepted")
orders_accepted_dlq_topic = declared_topic("orders.accepted.dlq")
inventory_topic = declared_topic("inventory")
order_events_topic = declared_topic("order.events")

# Orders and inventory (cartloom.agents.orders, .inventory, .saga): the internal saga topics,
# the remaining dead-letter topics, and the co-partitioned subscriptions of the two agents.
order_events_dlq_topic = declared_topic("order.events.dlq")
inventory_dlq_topic = declared_topic("inventory.dlq")
inventory_commands_topic = declared_topic("inventory.commands")
inventory_commands_dlq_topic = declared_topic("inventory.commands.dlq")
reservation_results_topic = declared_topic("reservation.results")
reservation_results_dlq_topic = declared_topic("reservation.results.dlq")
order_timeouts_topic = declared_topic("order.timeouts")
order_timeouts_dlq_topic = declared_topic("order.timeouts.dlq")
inventory_alerts_topic = declared_topic("inventory.alerts")


def co_partitioned_topics(*names: str) -> faust.TopicT:
    """One subscription to several topics keyed by the same entity (one agent, one writer).

    They must have the same partition count, so partition N of each lands on one worker.
    """
    specs = [topology.topic(name) for name in names]
    if len({spec.partitions for spec in specs}) != 1:
        raise ValueError(f"topics {names} must have the same number of partitions")
    return app.topic(
        *[spec.name for spec in specs],
        partitions=specs[0].partitions,
        replicas=specs[0].replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )


#: Everything keyed by order id that changes an order; the orders agent reads it, so it is
#: the only writer of ``order_by_id`` (privacy jobs on ``shopify.redactions`` included).
#: ``orders`` itself is read by the intake (cartloom.agents.intake), which forwards
#: envelopes of valid orders on ``orders.accepted``.
order_inputs = co_partitioned_topics(
    "orders.accepted", "order.events", "reservation.results", "order.timeouts", "shopify.redactions"
)
#: Everything keyed by SKU that changes stock; the inventory agent reads it.
stock_inputs = co_partitioned_topics("inventory", "inventory.commands")

# Shopify (cartloom.shopify, cartloom.agents.shopify)
shopify_webhooks_topic = declared_topic("shopify.webhooks")
shopify_webhooks_dlq_topic = declared_topic("shopify.webhooks.dlq")
shopify_catalog_topic = declared_topic("shopify.catalog")
shopify_inventory_items_topic = declared_topic("shopify.inventory_items")
shopify_redactions_topic = declared_topic("shopify.redactions")
shopify_data_exports_topic = declared_topic("shopify.data_exports")
