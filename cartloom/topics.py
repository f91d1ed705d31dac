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
