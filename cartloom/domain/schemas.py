"""The JSON Schemas (draft 2020-12) of the input topics, drawn from the validators' fields.

:data:`INPUT_CONTRACTS` names the three topics producers outside CartLoom write
(``orders``, ``order.events``, ``inventory``) with the contract their parser reads;
:func:`json_schema` turns a contract into the schema published in ``docs/schemas/`` and
served at ``GET /schemas/{topic}.json``. Nothing here is written by hand twice: field
names, types, limits and allowed values come from :mod:`cartloom.domain.fields`
declarations that :func:`~cartloom.domain.orders.parse_order`,
:func:`~cartloom.domain.lifecycle.parse_order_event` and
:func:`~cartloom.domain.inventory.parse_stock_message` check messages with. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cartloom.domain.fields import MessageContract
from cartloom.domain.inventory import STOCK_MESSAGE, parse_stock_message
from cartloom.domain.lifecycle import ORDER_EVENT_MESSAGE, parse_order_event
from cartloom.domain.orders import ORDER_MESSAGE, parse_order

DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: topic -> the contract of its values, for every topic producers outside CartLoom write.
INPUT_CONTRACTS: dict[str, MessageContract] = {
    contract.topic: contract for contract in (ORDER_MESSAGE, ORDER_EVENT_MESSAGE, STOCK_MESSAGE)
}

#: topic -> the validator CartLoom runs on each message (payload, key=...).
PARSERS: dict[str, Callable[..., Any]] = {
    "orders": parse_order,
    "order.events": parse_order_event,
    "inventory": parse_stock_message,
}

_ENVELOPE = (
    "Each message value is one JSON object in UTF-8; fields not listed here are ignored. "
    "A message CartLoom cannot use is copied to {topic}.dlq with the reason "
    "(cartloom-reason header), never dropped. Timestamps: CartLoom also reads other "
    "ISO-8601 forms Python's datetime.fromisoformat accepts, provided they carry a time "
    "zone; the pattern states RFC 3339, which every producer can write."
)


def key_rule(contract: MessageContract) -> str:
    """What the Kafka key of every message on ``contract.topic`` must be."""
    name = contract.key.name
    return (
        f"Kafka key: the UTF-8 bytes of {name}, equal to the value's {name} (a message whose "
        f"key differs, or that has none, is dead-lettered as key_mismatch). The key decides "
        f"the partition: with Kafka's default partitioner (murmur2; in librdkafka clients "
        f"set partitioner=murmur2_random) a message lands on the partition that owns its "
        f"{name}, with no extra hop to move it there."
    )


def json_schema(contract: MessageContract) -> dict[str, Any]:
    """The JSON Schema of ``contract.topic``'s message values."""
    description = " ".join(
        [contract.description, key_rule(contract), _ENVELOPE.format(topic=contract.topic)]
    )
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": f"urn:cartloom:schema:{contract.topic}",
        "title": contract.title,
        "description": description,
        "x-kafka-topic": contract.topic,
        "x-kafka-key": contract.key.name,
        **contract.record.json_schema(),
    }
    if contract.rules:
        schema["allOf"] = [rule.json_schema() for rule in contract.rules]
    schema["examples"] = list(contract.examples)
    return schema


def input_schemas() -> dict[str, dict[str, Any]]:
    """Topic -> its schema, for every input topic."""
    return {topic: json_schema(contract) for topic, contract in INPUT_CONTRACTS.items()}
